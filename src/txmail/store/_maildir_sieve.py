"""
Sieve scripts in a Maildir user's directory, where Dovecot (Pigeonhole)
keeps them with ``mail_location = maildir:~`` and its default
``sieve = file:~/sieve;active=~/.dovecot.sieve``:

* each script is the file ``sieve/NAME.sieve`` (the name in UTF-8, as
  given, in Unicode normalization form C);
* the active script is the symbolic link ``.dovecot.sieve`` ->
  ``sieve/NAME.sieve`` (relative, as Pigeonhole writes it and expects it);
  no link: no script is active;
* temporary files are written in ``sieve/tmp/`` (Pigeonhole's place for
  them); Pigeonhole's compiled ``NAME.svbin`` files beside the scripts are
  ignored, and removed with their script when txmail replaces or deletes it
  (Pigeonhole compiles the script again when it next runs it).

Neither ``sieve/`` nor ``.dovecot.sieve`` can be taken for a mailbox:
Maildir++ folders are the directories whose name starts with a dot and
that hold ``cur/``; ``sieve`` has no dot, and ``.dovecot.sieve`` is a link
to a file.  The mailbox names whose folder directory would be
``.dovecot.sieve`` or ``.dovecot.svbin`` (``dovecot/sieve``,
``dovecot/svbin``) are refused by the store (:data:`RESERVED_DIRS`).

Some setups have ``.dovecot.sieve`` as a regular file (written by hand or
by an old tool).  Pigeonhole moves such a file into the storage as the
script ``dovecot.orig`` when a script is next activated; txmail does the
same, at once, the first time it reads or changes the user's scripts (under
the store's lock): the file becomes ``sieve/dovecot.orig.sieve`` (or
``dovecot.orig-2``... when that name is taken) and ``.dovecot.sieve`` a
link to it, so the script stays active and is listed as ``dovecot.orig``.

Writes are durable and atomic: a script is written to a temporary file,
fsynced and renamed over its name, and the directory synced; the link is
made under a temporary name and renamed over ``.dovecot.sieve``; a rename
of the active script links the new name first, points the link at it, and
only then removes the old name, so a crash never leaves no script active.

Every function here blocks: the store runs them through ``run_blocking``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading

from txmail._fs import fsync_dir
from txmail.errors import InvalidScriptName, NoSuchScript, ScriptActive, ScriptExists
from txmail.sieve.storage import check_script_name

__all__ = [
    "ACTIVE_LINK",
    "ADOPTED_NAME",
    "RESERVED_DIRS",
    "SCRIPT_DIR",
    "active_script",
    "delete_script",
    "get_script",
    "list_scripts",
    "put_script",
    "rename_script",
    "set_active",
]

#: The directory of a user's scripts, in the user's directory.
SCRIPT_DIR = "sieve"
#: The symbolic link to the active script, in the user's directory.
ACTIVE_LINK = ".dovecot.sieve"
#: The file name extension of a script.
SUFFIX = ".sieve"
#: Pigeonhole's compiled form of a script (removed when the script changes).
BINARY_SUFFIX = ".svbin"
#: The name a regular ``.dovecot.sieve`` file is adopted under (Pigeonhole's).
ADOPTED_NAME = "dovecot.orig"
#: Directory names in the user's directory that no Maildir++ folder may take.
RESERVED_DIRS = frozenset({ACTIVE_LINK, ".dovecot.svbin"})
#: The longest file name most file systems take (octets).
_NAME_MAX = 255


def _dir(root: str) -> str:
    return os.path.join(root, SCRIPT_DIR)


def _file(root: str, name: str) -> str:
    """The file of the script *name* (checked, NFC)."""
    if len(os.fsencode(name + BINARY_SUFFIX)) > _NAME_MAX:
        raise InvalidScriptName(f"a script name takes at most {_NAME_MAX - len(BINARY_SUFFIX)} octets here")
    return os.path.join(_dir(root), name + SUFFIX)


def _ensure_dir(root: str) -> None:
    """Create ``sieve/`` and ``sieve/tmp/`` when missing (synced into their parents)."""
    path = _dir(root)
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)
        fsync_dir(root)
    tmp = os.path.join(path, "tmp")
    if not os.path.isdir(tmp):
        os.makedirs(tmp, exist_ok=True)
        fsync_dir(path)


def _write(root: str, name: str, content: bytes) -> None:
    """Replace the script *name* with *content*, durably (the directory is synced)."""
    target = _file(root, name)
    _ensure_dir(root)
    tmp = os.path.join(_dir(root), "tmp", f"{os.getpid()}.{threading.get_ident()}{SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _remove_binary(root, name)
    fsync_dir(_dir(root))


def _remove_binary(root: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(_dir(root), name + BINARY_SUFFIX))


def _names(root: str) -> list[str]:
    """The valid script names in ``sieve/`` (others are left alone and not listed)."""
    try:
        entries = os.listdir(_dir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = []
    for entry in entries:
        if not entry.endswith(SUFFIX) or entry.startswith("."):
            continue
        name = entry[: -len(SUFFIX)]
        try:
            if check_script_name(name) != name:
                continue
        except InvalidScriptName:
            continue
        if os.path.isfile(os.path.join(_dir(root), entry)):
            names.append(name)
    return sorted(names)


def _link_target(root: str) -> str | None:
    """
    The name of the script ``.dovecot.sieve`` points to, or ``None`` (no
    link, or one that points outside ``sieve/`` or to no script).  A
    regular file there is adopted first (:func:`_adopt`).
    """
    link = os.path.join(root, ACTIVE_LINK)
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno != errno.EINVAL or not os.path.isfile(link):
            raise
        return _adopt(root)
    directory, base = os.path.split(target)
    if not base.endswith(SUFFIX):
        return None
    absolute = os.path.normpath(os.path.join(root, directory))
    if absolute != os.path.normpath(_dir(root)) and os.path.realpath(absolute) != os.path.realpath(
        _dir(root)
    ):
        return None
    name = base[: -len(SUFFIX)]
    try:
        if check_script_name(name) != name:
            return None
    except InvalidScriptName:
        return None
    if not os.path.isfile(os.path.join(_dir(root), base)):
        return None  # a dangling link: nothing runs (as with Pigeonhole)
    return name


def _adopt(root: str) -> str:
    """
    Move a regular ``.dovecot.sieve`` file into ``sieve/`` as
    :data:`ADOPTED_NAME` (another name when taken) and make
    ``.dovecot.sieve`` a link to it: the name of the script.
    """
    link = os.path.join(root, ACTIVE_LINK)
    with open(link, "rb") as f:
        content = f.read()
    taken = set(_names(root))
    name = ADOPTED_NAME
    n = 1
    while name in taken:
        n += 1
        name = f"{ADOPTED_NAME}-{n}"
    _write(root, name, content)
    _point_link(root, name)
    return name


def _point_link(root: str, name: str | None) -> None:
    """Make ``.dovecot.sieve`` point to the script *name* (atomically), or remove it."""
    link = os.path.join(root, ACTIVE_LINK)
    if name is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
    else:
        tmp = f"{link}.tmp{os.getpid()}.{threading.get_ident()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.path.join(SCRIPT_DIR, name + SUFFIX), tmp)
        os.replace(tmp, link)
    fsync_dir(root)


def _existing(root: str, name: str) -> str:
    """The file of the existing script *name*; :class:`NoSuchScript` when there is none."""
    path = _file(root, name)
    if not os.path.isfile(path):
        raise NoSuchScript(name)
    return path


# -- the operations (ISieveScripts), blocking -----------------------------------


def list_scripts(root: str) -> list[tuple[str, bool]]:
    """Each script's name and whether it is the active one, by name."""
    active = _link_target(root)
    return [(name, name == active) for name in _names(root)]


def get_script(root: str, name: str) -> bytes:
    """The script *name*."""
    name = check_script_name(name)
    _link_target(root)  # adopt a regular .dovecot.sieve first
    try:
        with open(_file(root, name), "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError):
        raise NoSuchScript(name) from None


def put_script(root: str, name: str, content: bytes) -> None:
    """Store *content* as the script *name* (an active one stays active: the link names the file)."""
    name = check_script_name(name)
    _link_target(root)
    _write(root, name, bytes(content))


def delete_script(root: str, name: str) -> None:
    """Remove the script *name*, unless it is the active one."""
    name = check_script_name(name)
    path = _existing(root, name)
    if _link_target(root) == name:
        raise ScriptActive(name)
    os.unlink(path)
    _remove_binary(root, name)
    fsync_dir(_dir(root))


def rename_script(root: str, old: str, new: str) -> None:
    """Rename the script *old* to *new*; the link follows an active one."""
    old, new = check_script_name(old), check_script_name(new)
    old_path = _existing(root, old)
    new_path = _file(root, new)
    if old == new or os.path.lexists(new_path):
        raise ScriptExists(new)
    active = _link_target(root) == old
    try:
        os.link(old_path, new_path)  # fails if *new* appeared meanwhile
    except FileExistsError:
        raise ScriptExists(new) from None
    except OSError:
        # No hard links here: copy (never over an existing script).
        with open(old_path, "rb") as f:
            _write(root, new, f.read())
    fsync_dir(_dir(root))
    if active:
        _point_link(root, new)
    os.unlink(old_path)
    _remove_binary(root, old)
    fsync_dir(_dir(root))


def set_active(root: str, name: str | None) -> None:
    """Make the script *name* the active one; ``None``: none is."""
    if name is None:
        _link_target(root)
        _point_link(root, None)
        return
    name = check_script_name(name)
    _existing(root, name)
    _point_link(root, name)


def active_script(root: str) -> tuple[str, bytes] | None:
    """The active script's name and content, or ``None``."""
    name = _link_target(root)
    if name is None:
        return None
    try:
        with open(_file(root, name), "rb") as f:
            return name, f.read()
    except FileNotFoundError:
        return None  # removed by another program meanwhile
