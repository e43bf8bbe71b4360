"""
The ManageSieve wire syntax (RFC 5804 section 4): cutting the client's input
into commands (atoms, quoted strings, literals, numbers) with size caps
before anything is parsed, and writing strings and responses.

Pure: no I/O, no Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_QUOTED",
    "Atom",
    "Command",
    "FrameError",
    "LiteralTooLarge",
    "Number",
    "String",
    "parse_command",
    "quoted_or_literal",
    "response",
]

#: RFC 5804 section 4: ``quoted = DQUOTE *1024QUOTED-CHAR DQUOTE``.
MAX_QUOTED = 1024
#: Tokens of the longest command (a name and two arguments): more is an
#: error at once, so a line of many small literals is not parsed again and
#: again as its parts arrive.
MAX_TOKENS = 3
#: ``number = 1*DIGIT`` ... ``; 0 <= number < 4,294,967,296``.
MAX_NUMBER = 4_294_967_295


@dataclass(frozen=True, slots=True)
class Atom:
    """A bare word (a command name, ``ACTIVE``...), upper-cased."""

    value: str


@dataclass(frozen=True, slots=True)
class String:
    """A quoted string or a literal: its octets."""

    value: bytes
    literal: bool = False


@dataclass(frozen=True, slots=True)
class Number:
    """``number`` (HAVESPACE's size)."""

    value: int


Token = Atom | String | Number


@dataclass(frozen=True, slots=True)
class Command:
    """One command line: its name and arguments; *size* octets of input it took."""

    name: str
    args: tuple[Token, ...]
    size: int


class FrameError(Exception):
    """
    The input is not a command: *message* says why (for the ``NO``);
    *size* octets (through the line's CRLF) are to be dropped; -1: all
    that was received, and what comes up to the next CRLF.  *fatal*: the
    framing is lost (the line is too long), the session ends with ``BYE``.
    """

    def __init__(self, message: str, size: int, fatal: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.size = size
        self.fatal = fatal


class LiteralTooLarge(Exception):
    """
    A literal of *length* octets announced by the command *name* is longer
    than allowed: *start* octets precede it.  The session discards it as it
    arrives, then the rest of the line, and answers.
    """

    def __init__(self, name: str, start: int, length: int) -> None:
        super().__init__(name)
        self.name = name
        self.start = start
        self.length = length


_ATOM_CHARS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&'*+,-./:;<=>?@[]^_`|~"
)


def parse_command(
    buf: bytes | bytearray,
    *,
    max_line: int,
    max_literal: int,
    sasl: bool = False,
    need: list[int] | None = None,
) -> Command | None:
    """
    The first whole command in *buf*, or ``None`` when more input is needed.

    ABNF (RFC 5804 section 4)::

        command     = command-name *(SP argument) CRLF
        string      = quoted / literal-c2s
        quoted      = DQUOTE *1024QUOTED-CHAR DQUOTE
        literal-c2s = "{" number "+}" CRLF *OCTET

    Synchronizing literals (``{n}``, without ``+``) are accepted too, as
    Dovecot does, and never wait for a continuation (ManageSieve has none).
    Spaces between arguments are taken leniently (one or more).  The octets
    outside literals of one command are at most *max_line*, each literal
    at most *max_literal*.  With *sasl*, the line is a client's SASL
    response (section 2.1: a string, no command name): the command's name
    is ``""`` and every token is an argument.  When the answer is ``None``
    because a literal's octets have not all arrived, ``need[0]`` (if *need*
    is given) is set to the length *buf* must reach before parsing again
    can give more: callers parsing as input arrives stay linear.

    Raises:
        FrameError: not a command (or a line too long: ``fatal``).
        LiteralTooLarge: a literal longer than *max_literal*.
    """
    pos = 0
    outside = 0  # octets outside literals so far
    tokens: list[Token] = []
    n = len(buf)

    def line_end(start: int) -> int:
        """The size through the CRLF ending the line at *start*, to drop; -1: not received yet."""
        idx = buf.find(b"\r\n", start)
        return -1 if idx < 0 else idx + 2

    while True:
        # Skip spaces.
        while pos < n and buf[pos] == 0x20:
            pos += 1
            outside += 1
        if outside > max_line:
            raise FrameError("Line too long", line_end(pos), fatal=True)
        if pos >= n:
            return None
        ch = buf[pos]
        if ch == 0x0D:
            if pos + 1 >= n:
                return None
            if buf[pos + 1] != 0x0A:
                raise FrameError("Bare CR in a command", line_end(pos))
            size = pos + 2
            if sasl:
                return Command("", tuple(tokens), size)
            if not tokens:
                raise FrameError("Empty command", size)
            first = tokens[0]
            if not isinstance(first, Atom):
                raise FrameError("A command begins with its name", size)
            return Command(first.value, tuple(tokens[1:]), size)
        if ch == 0x0A:
            raise FrameError("Bare LF in a command", pos + 1)
        if ch == 0x22:  # quoted
            out = bytearray()
            i = pos + 1
            while True:
                if i >= n:
                    if outside + (i - pos) > max_line:
                        raise FrameError("Line too long", line_end(i), fatal=True)
                    return None
                c = buf[i]
                if c == 0x22:
                    break
                if c == 0x5C:
                    if i + 1 >= n:
                        return None
                    nxt = buf[i + 1]
                    if nxt not in (0x22, 0x5C):
                        raise FrameError("Bad escape in a quoted string", line_end(i))
                    out.append(nxt)
                    i += 2
                    continue
                if c in (0x0D, 0x0A, 0x00):
                    raise FrameError("Unterminated quoted string", line_end(i))
                out.append(c)
                i += 1
                if len(out) > MAX_QUOTED:
                    raise FrameError("Quoted string too long (use a literal)", line_end(i))
            outside += i + 1 - pos
            pos = i + 1
            tokens.append(String(bytes(out)))
        elif ch == 0x7B:  # literal
            close = buf.find(b"}", pos, pos + 16)
            if close < 0:
                # A marker is short: without its "}" within 16 octets, or
                # with the line's CRLF before it, it is not one (waiting for
                # more would stall a complete line until another CRLF).
                if n - pos < 16 and buf.find(b"\r\n", pos) < 0:
                    return None
                raise FrameError("Bad literal", line_end(pos))
            spec = bytes(buf[pos + 1 : close])
            digits = spec[:-1] if spec.endswith(b"+") else spec
            if not digits.isdigit() or int(digits) > MAX_NUMBER:
                raise FrameError("Bad literal", line_end(pos))
            if close + 3 > n and bytes(buf[close + 1 :]) in (b"", b"\r"):
                return None
            if buf[close + 1 : close + 3] != b"\r\n":
                raise FrameError("A literal's size is followed by CRLF", line_end(pos))
            length = int(digits)
            start = close + 3
            outside += start - pos
            if outside > max_line:
                raise FrameError("Line too long", line_end(pos), fatal=True)
            if length > max_literal:
                name = tokens[0].value if tokens and isinstance(tokens[0], Atom) else ""
                raise LiteralTooLarge(name, start, length)
            if n < start + length:
                if need is not None:
                    need[0] = start + length
                return None
            tokens.append(String(bytes(buf[start : start + length]), literal=True))
            pos = start + length
        else:
            i = pos
            while i < n and buf[i] in _ATOM_CHARS:
                i += 1
            if i == pos:
                raise FrameError("Unexpected character in a command", line_end(pos))
            if i >= n and outside + (i - pos) <= max_line:
                return None  # the atom may go on
            word = bytes(buf[pos:i]).decode("ascii")
            outside += i - pos
            pos = i
            if word.isdigit():
                value = int(word)
                if value > MAX_NUMBER:
                    raise FrameError("Number too large", line_end(pos))
                tokens.append(Number(value))
            else:
                tokens.append(Atom(word.upper()))
        if len(tokens) > MAX_TOKENS:
            raise FrameError("Too many arguments", line_end(pos))
        if pos < n and buf[pos] not in (0x20, 0x0D):
            raise FrameError("Arguments are separated by spaces", line_end(pos))


def quoted_or_literal(value: bytes | str) -> bytes:
    """*value* as a ManageSieve string: quoted when it can be, else a literal (``{n}`` CRLF octets)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) <= MAX_QUOTED and not any(c in data for c in (0x0D, 0x0A, 0x00)):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def response(kind: str, code: str | None = None, text: str | None = None) -> bytes:
    """
    A response line (RFC 5804 section 4)::

        response-oknobye = ("OK" / "NO" / "BYE") [SP "(" resp-code ")"] [SP string] CRLF

    *code* is written as given (``NONEXISTENT``, ``TAG "x"``...).
    """
    out = kind.encode("ascii")
    if code:
        out += b" (" + code.encode("utf-8") + b")"
    if text is not None:
        out += b" " + quoted_or_literal(text)
    return out + b"\r\n"
