"""
Resource limits of the Sieve engine.

The defaults follow Pigeonhole (Dovecot): ``sieve_max_script_size`` 1 MiB,
``sieve_max_actions`` 32, ``sieve_max_redirects`` 4,
``sieve_include_max_nesting_depth`` 10, ``sieve_include_max_includes`` 255,
``sieve_variables_max_scope_size`` 255 and
``sieve_variables_max_variable_size`` 4 KiB.  Pigeonhole bounds CPU time;
this engine counts interpreter steps instead, so a run is bounded whatever
the machine's speed.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Limits"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """The bounds a script is parsed and run within (see the module docstring)."""

    #: Characters of one script.
    max_script_size: int = 1024 * 1024
    #: Nesting of blocks, tests inside tests and lists (a parse error beyond it).
    max_nesting: int = 32
    #: Characters of one string literal.
    max_string_length: int = 64 * 1024
    #: Actions (keep, fileinto, redirect, vacation...) of one run.
    max_actions: int = 32
    #: ``redirect`` actions of one run.
    max_redirects: int = 4
    #: Nesting of ``include`` (RFC 6609).
    max_include_depth: int = 10
    #: Distinct scripts included, all levels together.
    max_includes: int = 255
    #: Interpreter steps of one run: each command, test and matched string
    #: counts, as does the work of each ``:matches`` comparison.
    max_steps: int = 200_000
    #: Variables of one scope (RFC 5229).
    max_variables: int = 255
    #: Characters of one variable's value (longer values are truncated).
    max_variable_size: int = 4096
    #: Octets of a header field that ``addheader`` adds (RFC 5293).
    max_header_size: int = 2048
    #: The range a vacation response period is kept within (RFC 5230
    #: section 4.1 and RFC 6131: ``:days`` at least 1, ``:seconds`` may be 0).
    vacation_default_seconds: int = 7 * 86400
    vacation_min_seconds: int = 0
    vacation_max_seconds: int = 90 * 86400
    #: The default ``duplicate`` period (RFC 7352 section 3.3).
    duplicate_default_seconds: int = 7 * 86400
    duplicate_max_seconds: int = 7 * 86400
