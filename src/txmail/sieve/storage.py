"""
Sieve script storage shared by the stores (:class:`txmail.interfaces.ISieveScripts`):
the script name rule of RFC 5804 section 1.6 and :class:`ScriptTable`, the
in-memory table of one user's scripts that the memory store keeps and that
other stores can use as their cache.

Pure: no I/O, no Twisted.
"""

from __future__ import annotations

import unicodedata

from txmail.errors import InvalidScriptName, NoSuchScript, ScriptActive, ScriptExists

__all__ = ["MAX_SCRIPT_NAME", "ScriptTable", "check_script_name"]

#: The longest script name, in characters (Dovecot's ``sieve_max_script_name`` default too).
MAX_SCRIPT_NAME = 128


def check_script_name(name: object) -> str:
    """
    *name* when it is a valid script name (RFC 5804 section 1.6: UTF-8
    without control characters (Cc), line or paragraph separators (Zl,
    Zp) and unassigned code points, here also without ``/``, NUL, and a
    leading ``.``, at most :data:`MAX_SCRIPT_NAME` characters), in Unicode
    normalization form C (RFC 5198), else :class:`InvalidScriptName`.
    """
    if not isinstance(name, str) or not name:
        raise InvalidScriptName("a script name must be a non-empty string")
    name = unicodedata.normalize("NFC", name)
    if len(name) > MAX_SCRIPT_NAME:
        raise InvalidScriptName(f"a script name has at most {MAX_SCRIPT_NAME} characters")
    if name.startswith(".") or "/" in name:
        raise InvalidScriptName("a script name cannot contain '/' or start with '.'")
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cn", "Cs"):
            raise InvalidScriptName(f"a script name cannot contain U+{ord(ch):04X}")
    return name


class ScriptTable:
    """One user's scripts by name and the active one's name, with the rules of :class:`ISieveScripts`."""

    def __init__(self) -> None:
        self.scripts: dict[str, bytes] = {}
        self.active: str | None = None

    def list(self) -> list[tuple[str, bool]]:
        return [(name, name == self.active) for name in sorted(self.scripts)]

    def get(self, name: str) -> bytes:
        name = check_script_name(name)
        try:
            return self.scripts[name]
        except KeyError:
            raise NoSuchScript(name) from None

    def put(self, name: str, content: bytes) -> None:
        self.scripts[check_script_name(name)] = bytes(content)

    def delete(self, name: str) -> None:
        name = check_script_name(name)
        if name not in self.scripts:
            raise NoSuchScript(name)
        if name == self.active:
            raise ScriptActive(name)
        del self.scripts[name]

    def rename(self, old: str, new: str) -> None:
        old, new = check_script_name(old), check_script_name(new)
        if old not in self.scripts:
            raise NoSuchScript(old)
        if new in self.scripts:
            raise ScriptExists(new)
        self.scripts[new] = self.scripts.pop(old)
        if self.active == old:
            self.active = new

    def set_active(self, name: str | None) -> None:
        if name is not None:
            name = check_script_name(name)
            if name not in self.scripts:
                raise NoSuchScript(name)
        self.active = name

    def active_script(self) -> tuple[str, bytes] | None:
        if self.active is None:
            return None
        return self.active, self.scripts[self.active]
