"""
The errors of the Sieve engine.

A :class:`SieveError` is what a script upload is refused with (RFC 5804's
PUTSCRIPT and CHECKSCRIPT answer its text): a syntax error, an unknown or
unrequired extension (RFC 5228 section 3.2), a bad argument, or a resource
limit exceeded at parse time.  It carries the 1-based line and column of the
offending token.

A :class:`SieveRuntimeError` happens while a script runs; the interpreter
never lets it escape :func:`txmail.sieve.run`: the actions so far are dropped
and the implicit keep is taken (RFC 5228 section 2.10.6), with the error in
:attr:`txmail.sieve.Result.errors`.
"""

from __future__ import annotations

__all__ = ["LimitExceeded", "ScriptNotFound", "SieveError", "SieveRuntimeError"]


class SieveError(Exception):
    """A script is not valid Sieve: its *message*, with the *line* and *column* where it went wrong."""

    def __init__(self, message: str, line: int = 0, column: int = 0, script: str | None = None) -> None:
        self.message = message
        self.line = line
        self.column = column
        #: The name of the included script the error is in (``None``: the main script).
        self.script = script
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}"
        if self.script is not None:
            where = f"script {self.script!r}, {where}"
        return f"{where}: {self.message}"


class SieveRuntimeError(Exception):
    """An error while a script runs (the implicit keep is taken instead)."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        self.message = message
        self.line = line
        self.column = column
        super().__init__(f"line {line}: {message}" if line else message)


class LimitExceeded(SieveRuntimeError):
    """A resource limit (steps, actions, redirects, include depth...) was hit while a script ran."""


class ScriptNotFound(LookupError):
    """Raised by an include loader when the named script does not exist (RFC 6609 ``:optional``)."""
