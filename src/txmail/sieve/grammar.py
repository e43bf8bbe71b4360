"""
The Sieve grammar (RFC 5228 section 8): tokens and the generic syntax tree.

This module knows nothing of commands: it turns the text of a script into
:class:`RawCommand` nodes whose arguments are :class:`StringList`,
:class:`Number` and :class:`Tag` values and whose tests are
:class:`RawTest` nodes.  :mod:`txmail.sieve.commands` checks them against
the commands the script requires.

Lexical rules (RFC 5228 section 8.1):

* ``#`` comments run to the end of the line, ``/* ... */`` comments do not
  nest;
* quoted strings undo ``\\\\`` and ``\\"`` escapes; any other backslash is
  dropped, keeping the character after it (section 2.4.2);
* ``text:`` starts a multi-line string ending at a line holding a lone
  ``.``; a line starting with ``..`` loses one dot (dot-stuffing);
* numbers take a ``K``, ``M`` or ``G`` quantifier (section 2.4.1, powers of
  1024).

Every node carries the 1-based line and column where it starts.  Errors are
:class:`~txmail.sieve.errors.SieveError` with that position.
"""

from __future__ import annotations

import dataclasses

from txmail.sieve.errors import SieveError
from txmail.sieve.limits import Limits

__all__ = ["Number", "RawCommand", "RawTest", "StringList", "Tag", "parse_syntax"]


@dataclasses.dataclass
class StringList:
    """A string or a ``[...]`` list of strings; *multiline* marks a ``text:`` string."""

    values: list[str]
    line: int
    column: int
    is_list: bool = False


@dataclasses.dataclass
class Number:
    value: int
    line: int
    column: int


@dataclasses.dataclass
class Tag:
    """A tagged argument such as ``:contains`` (stored lower-case, with its colon)."""

    name: str
    line: int
    column: int


Argument = StringList | Number | Tag


@dataclasses.dataclass
class RawTest:
    name: str
    arguments: list[Argument]
    tests: list[RawTest]
    line: int
    column: int


@dataclasses.dataclass
class RawCommand:
    name: str
    arguments: list[Argument]
    tests: list[RawTest]
    block: list[RawCommand] | None
    line: int
    column: int


_QUANTIFIERS = {"K": 1024, "M": 1024**2, "G": 1024**3}
#: The largest number (RFC 5228 section 2.4.1: at least 2**31 - 1; Pigeonhole keeps 64 bits).
MAX_NUMBER = 2**63 - 1
_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT = _IDENT_START | frozenset("0123456789")
_SPECIALS = frozenset("[](){},;")


@dataclasses.dataclass
class _Token:
    kind: str  # "ident", "tag", "number", "string", "text", a special character, "eof"
    value: object
    line: int
    column: int


class _Lexer:
    def __init__(self, text: str, limits: Limits) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.line_start = 0
        self.limits = limits

    def error(self, message: str, line: int | None = None, column: int | None = None) -> SieveError:
        if line is None:
            line, column = self.line, self.pos - self.line_start + 1
        return SieveError(message, line, column or 1)

    def _advance_to(self, end: int) -> None:
        """Move to *end*, counting the line ends passed."""
        text = self.text
        nl = text.find("\n", self.pos, end)
        while nl != -1:
            self.line += 1
            self.line_start = nl + 1
            nl = text.find("\n", nl + 1, end)
        self.pos = end

    def _skip_space(self) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            c = text[self.pos]
            if c in " \t\r\n":
                self._advance_to(self.pos + 1)
            elif c == "#":
                end = text.find("\n", self.pos)
                self._advance_to(n if end == -1 else end + 1)
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end == -1:
                    raise self.error("unterminated comment: /* without */")
                self._advance_to(end + 2)
            else:
                return

    def tokens(self) -> list[_Token]:
        out: list[_Token] = []
        text, n = self.text, len(self.text)
        while True:
            self._skip_space()
            line, column = self.line, self.pos - self.line_start + 1
            if self.pos >= n:
                out.append(_Token("eof", None, line, column))
                return out
            c = text[self.pos]
            if c in _SPECIALS:
                out.append(_Token(c, c, line, column))
                self.pos += 1
            elif c == '"':
                out.append(_Token("string", self._quoted(), line, column))
            elif c == ":":
                end = self.pos + 1
                if end >= n or text[end] not in _IDENT_START:
                    raise self.error("a tag needs a name after the colon")
                while end < n and text[end] in _IDENT:
                    end += 1
                out.append(_Token("tag", text[self.pos : end].lower(), line, column))
                self.pos = end
            elif c.isascii() and c.isdigit():
                out.append(_Token("number", self._number(), line, column))
            elif c in _IDENT_START:
                end = self.pos + 1
                while end < n and text[end] in _IDENT:
                    end += 1
                word = text[self.pos : end]
                if word.lower() == "text" and end < n and text[end] == ":":
                    self.pos = end + 1
                    out.append(_Token("string", self._multiline(), line, column))
                else:
                    out.append(_Token("ident", word.lower(), line, column))
                    self.pos = end
            else:
                raise self.error(f"unexpected character {c!r}")

    def _number(self) -> int:
        text, n = self.text, len(self.text)
        end = self.pos
        while end < n and text[end].isascii() and text[end].isdigit():
            end += 1
        value = int(text[self.pos : end])
        if end < n and text[end].upper() in _QUANTIFIERS:
            value *= _QUANTIFIERS[text[end].upper()]
            end += 1
        if end < n and text[end] in _IDENT:
            raise self.error(f"bad number {text[self.pos : end + 1]!r}")
        if value > MAX_NUMBER:
            raise self.error("number too large")
        self.pos = end
        return value

    def _check_length(self, length: int) -> None:
        if length > self.limits.max_string_length:
            raise self.error(f"string longer than {self.limits.max_string_length} characters")

    def _quoted(self) -> str:
        text, n = self.text, len(self.text)
        start_line, start_column = self.line, self.pos - self.line_start + 1
        i = self.pos + 1
        pieces: list[str] = []
        size = 0
        while True:
            j = i
            while j < n and text[j] not in '"\\':
                j += 1
            pieces.append(text[i:j])
            size += j - i
            if j >= n:
                raise self.error("unterminated string", start_line, start_column)
            if text[j] == '"':
                self._check_length(size)
                self._advance_to(j + 1)
                return "".join(pieces)
            if j + 1 >= n:
                raise self.error("unterminated string", start_line, start_column)
            pieces.append(text[j + 1])  # \" -> ", \\ -> \, \x -> x (RFC 5228 section 2.4.2)
            size += 1
            i = j + 2
            if size > self.limits.max_string_length:
                self._check_length(size)

    def _multiline(self) -> str:
        text, n = self.text, len(self.text)
        # After "text:": optional white space, then a hash comment or a line end.
        i = self.pos
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == "#":
            i = text.find("\n", i)
            i = n if i == -1 else i
        elif text.startswith("\r\n", i):
            i += 1
        if i >= n or text[i] != "\n":
            self.pos = i
            raise self.error("text: must be followed by the end of the line")
        self._advance_to(i + 1)
        lines: list[str] = []
        size = 0
        while True:
            if self.pos >= n:
                raise self.error("unterminated multi-line string: no line with a lone '.'")
            end = text.find("\n", self.pos)
            line = text[self.pos : n if end == -1 else end + 1]
            bare = line.rstrip("\r\n")
            if bare == ".":
                self._advance_to(self.pos + len(line))
                return "".join(lines)
            if bare.startswith(".."):
                line = line[1:]
            if line.endswith("\n") and not line.endswith("\r\n"):
                line = line[:-1] + "\r\n"  # the string's lines end in CRLF (section 8.1)
            lines.append(line)
            size += len(line)
            self._check_length(size)
            self._advance_to(n if end == -1 else end + 1)


class _Parser:
    def __init__(self, tokens: list[_Token], limits: Limits) -> None:
        self.tokens = tokens
        self.i = 0
        self.limits = limits

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, message: str, tok: _Token | None = None) -> SieveError:
        tok = tok or self.peek()
        return SieveError(message, tok.line, tok.column)

    def _depth(self, depth: int, tok: _Token) -> None:
        if depth > self.limits.max_nesting:
            raise self.error(f"nesting deeper than {self.limits.max_nesting} levels", tok)

    def commands(self, depth: int, in_block: bool) -> list[RawCommand]:
        out: list[RawCommand] = []
        while True:
            tok = self.peek()
            if tok.kind == "eof":
                if in_block:
                    raise self.error("missing '}' at the end of the script")
                return out
            if tok.kind == "}":
                if not in_block:
                    raise self.error("unexpected '}'")
                return out
            out.append(self.command(depth))

    def command(self, depth: int) -> RawCommand:
        tok = self.take()
        if tok.kind != "ident":
            raise self.error(f"expected a command, found {_describe(tok)}", tok)
        arguments, tests = self.arguments(depth, tok)
        end = self.take()
        if end.kind == ";":
            return RawCommand(tok.value, arguments, tests, None, tok.line, tok.column)  # type: ignore[arg-type]  # an identifier token's value is a str
        if end.kind == "{":
            self._depth(depth + 1, end)
            block = self.commands(depth + 1, True)
            self.take()  # the "}"
            return RawCommand(tok.value, arguments, tests, block, tok.line, tok.column)  # type: ignore[arg-type]  # an identifier token's value is a str
        raise self.error(f"missing ';' after the {tok.value} command (found {_describe(end)})", end)

    def arguments(self, depth: int, head: _Token) -> tuple[list[Argument], list[RawTest]]:
        arguments: list[Argument] = []
        while True:
            tok = self.peek()
            if tok.kind == "string":
                self.take()
                arguments.append(StringList([tok.value], tok.line, tok.column))  # type: ignore[list-item]  # a string token's value is a str
            elif tok.kind == "number":
                self.take()
                arguments.append(Number(tok.value, tok.line, tok.column))  # type: ignore[arg-type]  # a number token's value is an int
            elif tok.kind == "tag":
                self.take()
                arguments.append(Tag(tok.value, tok.line, tok.column))  # type: ignore[arg-type]  # a tag token's value is a str
            elif tok.kind == "[":
                arguments.append(self.string_list())
            else:
                break
        tok = self.peek()
        if tok.kind == "ident":
            return arguments, [self.test(depth + 1)]
        if tok.kind == "(":
            self.take()
            self._depth(depth + 1, tok)
            tests = [self.test(depth + 1)]
            while self.peek().kind == ",":
                self.take()
                tests.append(self.test(depth + 1))
            close = self.take()
            if close.kind != ")":
                raise self.error(f"expected ',' or ')' in a test list, found {_describe(close)}", close)
            return arguments, tests
        return arguments, []

    def test(self, depth: int) -> RawTest:
        tok = self.take()
        self._depth(depth, tok)
        if tok.kind != "ident":
            raise self.error(f"expected a test, found {_describe(tok)}", tok)
        arguments, tests = self.arguments(depth, tok)
        return RawTest(tok.value, arguments, tests, tok.line, tok.column)  # type: ignore[arg-type]  # an identifier token's value is a str

    def string_list(self) -> StringList:
        open_ = self.take()
        values = []
        while True:
            tok = self.take()
            if tok.kind != "string":
                raise self.error(f"expected a string in a string list, found {_describe(tok)}", tok)
            values.append(tok.value)
            tok = self.take()
            if tok.kind == "]":
                return StringList(values, open_.line, open_.column, is_list=True)  # type: ignore[arg-type]  # string tokens' values are str
            if tok.kind != ",":
                raise self.error(f"expected ',' or ']' in a string list, found {_describe(tok)}", tok)


def _describe(tok: _Token) -> str:
    if tok.kind == "eof":
        return "the end of the script"
    if tok.kind == "string":
        return "a string"
    if tok.kind == "number":
        return f"the number {tok.value}"
    if tok.kind in ("ident", "tag"):
        return repr(tok.value)
    return repr(tok.kind)


def parse_syntax(text: str, limits: Limits) -> list[RawCommand]:
    """The commands of *text* (RFC 5228 section 8.2), or a :class:`SieveError`."""
    if len(text) > limits.max_script_size:
        raise SieveError(f"script larger than {limits.max_script_size} characters", 1, 1)
    tokens = _Lexer(text, limits).tokens()
    return _Parser(tokens, limits).commands(0, False)
