"""
Comparators and match types (RFC 5228 sections 2.7.1 to 2.7.3, RFC 4790,
RFC 5231 relational, RFC 5229 section 3.2 match variables).

Comparators: ``i;octet`` (code points as they are), ``i;ascii-casemap``
(ASCII letters folded, the default) and ``i;ascii-numeric`` (the leading
digits as a number, a string without them greater than every number;
equality and ordering only, so ``:contains`` and ``:matches`` with it are
refused at parse time).

``:matches`` is a glob (``*``, ``?``, ``\\`` escaping them) matched without
backtracking: the pattern is split at its stars into segments, the first
anchored at the start, the last at the end and each middle one placed at its
leftmost position.  That placement is also what RFC 5229 section 3.2 asks of
match variables (each star as short as possible, left to right), and the
work is at most the length of the string times the length of the pattern;
:func:`glob_match` reports that work so the interpreter can charge it to the
step budget.
"""

from __future__ import annotations

import re

from txmail.sieve.errors import LimitExceeded

__all__ = [
    "COMPARATORS",
    "RELATIONS",
    "compare_values",
    "compile_glob",
    "contains",
    "fold",
    "glob_match",
    "is_equal",
    "numeric_key",
]

COMPARATORS = ("i;octet", "i;ascii-casemap", "i;ascii-numeric")
RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")

_ASCII_FOLD = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def fold(comparator: str, s: str) -> str:
    """*s* as *comparator* sees it for equality and substrings."""
    if comparator == "i;ascii-casemap":
        return s.translate(_ASCII_FOLD)
    return s


def numeric_key(s: str) -> int | None:
    """``i;ascii-numeric`` (RFC 4790 section 9.1): the leading digits, ``None`` (infinity) without."""
    end = 0
    while end < len(s) and "0" <= s[end] <= "9":
        end += 1
    return int(s[:end]) if end else None


def _order(comparator: str, a: str, b: str) -> int:
    if comparator == "i;ascii-numeric":
        ka, kb = numeric_key(a), numeric_key(b)
        if ka is None or kb is None:
            return (ka is None) - (kb is None)
        return (ka > kb) - (ka < kb)
    a, b = fold(comparator, a), fold(comparator, b)
    return (a > b) - (a < b)


def compare_values(comparator: str, relation: str, value: str, key: str) -> bool:
    """RFC 5231 section 4: *value* RELATION *key* under *comparator*."""
    c = _order(comparator, value, key)
    return {
        "gt": c > 0,
        "ge": c >= 0,
        "lt": c < 0,
        "le": c <= 0,
        "eq": c == 0,
        "ne": c != 0,
    }[relation]


def is_equal(comparator: str, value: str, key: str) -> bool:
    return _order(comparator, value, key) == 0


def contains(comparator: str, value: str, key: str) -> bool:
    return fold(comparator, key) in fold(comparator, value)


# -- :matches -------------------------------------------------------------

#: A segment is a list of characters, ``None`` standing for ``?``.
Segment = list[str | None]


def compile_glob(pattern: str) -> list[Segment]:
    """Split *pattern* at its unescaped stars: ``n`` stars give ``n + 1`` segments."""
    segments: list[Segment] = [[]]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            segments[-1].append(pattern[i + 1])
            i += 2
            continue
        if c == "*":
            segments.append([])
        elif c == "?":
            segments[-1].append(None)
        else:
            segments[-1].append(c)
        i += 1
    return segments


def _find(seg: Segment, s: str, start: int, stop: int, budget: int) -> tuple[int, int]:
    """
    The leftmost place in ``s[start:stop]`` for *seg* (``-1`` when none),
    and the work done.  A segment with ``?`` is searched with a fixed-length
    regular expression (no repetition, so no backtracking), a window at a
    time so that its cost (positions times length) is checked against
    *budget* as it goes.
    """
    if None not in seg:
        found = s.find("".join(seg), start, stop)  # type: ignore[arg-type]  # no None in seg once checked
        return found, (found if found >= 0 else stop) - start + len(seg) + 1
    pattern = re.compile("".join("." if c is None else re.escape(c) for c in seg), re.DOTALL)
    window = max(1, _WINDOW // len(seg))
    work = 0
    at = start
    while at + len(seg) <= stop:
        end = min(stop, at + window + len(seg) - 1)
        m = pattern.search(s, at, end)
        work += (end - at) * len(seg) // _C_SPEEDUP + 1
        if m is not None:
            return m.start(), work
        if work > budget:
            raise LimitExceeded("too many steps: a :matches comparison took too long")
        at += window
    return -1, work + 1


#: Character comparisons of one window of a ``?`` segment search.
_WINDOW = 1 << 16
#: How much cheaper a comparison in the regular expression engine is than
#: one of the interpreter: the unit of work stays about the same in time.
_C_SPEEDUP = 16


def _segment_at(seg: Segment, s: str, pos: int) -> bool:
    if pos + len(seg) > len(s):
        return False
    if None not in seg:
        return s.startswith("".join(seg), pos)  # type: ignore[arg-type]  # no None in seg once checked
    return all(c is None or c == s[pos + k] for k, c in enumerate(seg))


def glob_match(comparator: str, value: str, pattern: str, budget: int) -> tuple[list[str] | None, int]:
    """
    Match *value* against the glob *pattern*: the match variables (``${0}``
    the whole value, then one per ``*`` and ``?`` in order) or ``None``, and
    the work done (about one unit per character compared).  More than
    *budget* work raises :class:`~txmail.sieve.errors.LimitExceeded`.
    """
    segments = compile_glob(pattern)
    subject = value
    if comparator == "i;ascii-casemap":  # folding keeps lengths, so indices stay valid
        subject = fold(comparator, value)
        segments = [[None if c is None else fold(comparator, c) for c in seg] for seg in segments]
    work = 1
    first, last = segments[0], segments[-1]
    if len(segments) == 1:
        ok = len(first) == len(value) and _segment_at(first, subject, 0)
        return ([value, *_wild(first, value, 0)] if ok else None), work + len(first)
    if not _segment_at(first, subject, 0):
        return None, work + len(first)
    captures: list[str] = [value, *_wild(first, value, 0)]
    pos = len(first)
    end_start = len(value) - len(last)
    if end_start < pos:
        return None, work
    for seg in segments[1:-1]:
        found, cost = _find(seg, subject, pos, end_start, budget - work)
        work += cost
        if work > budget:
            raise LimitExceeded("too many steps: a :matches comparison took too long")
        if found < 0:
            return None, work
        captures.append(value[pos:found])
        captures.extend(_wild(seg, value, found))
        pos = found + len(seg)
    work += len(last)
    if not _segment_at(last, subject, end_start):
        return None, work
    captures.append(value[pos:end_start])
    captures.extend(_wild(last, value, end_start))
    return captures, work


def _wild(seg: Segment, value: str, at: int) -> list[str]:
    """The characters the ``?`` of *seg* matched when it is placed at *at*."""
    return [value[at + k] for k, c in enumerate(seg) if c is None]
