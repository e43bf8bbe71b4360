"""
Incremental framing of IMAP client input into commands (RFC 3501 section
2.2, section 4.3 and section 7.5; RFC 7888 LITERAL+; RFC 3516 literal8).

Theory of operation
-------------------
An IMAP command is one or more CRLF-terminated lines joined by literals: a
line that ends with ``{n}`` (synchronizing), ``{n+}`` (non-synchronizing,
RFC 7888) or ``~{n}`` / ``~{n+}`` (literal8, RFC 3516) is followed by
exactly ``n`` octets, then the command goes on with the next line.  The
framer cuts the input into :class:`LineFragment` and
:class:`LiteralFragment` pieces::

    A001 LOGIN {11}\\r\\nFRED FOOBAR {7}\\r\\nfat man\\r\\n

gives ``LineFragment(b"A001 LOGIN ")``, ``LiteralFragment(b"FRED FOOBAR")``,
``LineFragment(b" ")``, ``LiteralFragment(b"fat man")``, ``LineFragment(b"")``:
the literal markers and the CRLFs are taken out, so that
:mod:`txmail.imap.parser` sees a literal exactly where its ``{n}`` stood.

The shape is h11's::

    framer.receive_data(data)
    while (event := framer.next_event()) is not None:
        ...

* :class:`CommandFragments`: one complete command.
* :class:`LiteralAnnounced`: a line ended with a synchronizing literal that
  is within the limits.  The framer **pauses** (``next_event`` returns
  ``None``) until the server called :meth:`CommandFramer.accept_literal`
  (after writing ``+ ...``) or :meth:`CommandFramer.reject_literal` (after
  writing a tagged ``BAD``/``NO``); RFC 3501 section 7.5: the client waits
  for the continuation before it sends the octets, so after a refusal the
  rest of the command never comes and what was framed of it is discarded.
* :class:`FramingError`: the command broke a limit or a rule; the server
  answers ``tag BAD text`` (``tag`` is ``None`` when it could not be
  read).  The framer has already skipped the command's octets.

Invariants
----------
* Every buffer is bounded: a line may hold ``max_line`` octets including
  its CRLF, a literal ``max_literal`` octets, a command ``max_command``
  octets in all (lines and literals).  Octets beyond a limit are counted
  and dropped, never stored.
* An oversized **synchronizing** literal is refused before any of its
  octets are read (:class:`FramingError`, code ``TOOBIG``): the client is
  waiting for a continuation and will not send them.
* An oversized **non-synchronizing** literal cannot be refused in advance
  (RFC 7888 section 4): the framer reports the error at once and skips the
  literal's octets and the rest of the command (further lines and
  non-synchronizing literals) without keeping them.
* While paused (waiting for a literal decision) input is only appended to
  the buffer; the adapter stops reading from the transport meanwhile
  (``pauseProducing``), so the buffer holds at most what was already read.
* Only CRLF ends a line.  A bare LF is accepted as a line end too:
  deviation, for clients (and tests) that send LF only; RFC 3501 section
  2.2 requires CRLF from the client, but nothing is ambiguous about LF.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_COMMAND",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_LITERAL",
    "CommandFragments",
    "CommandFramer",
    "Event",
    "Fragment",
    "FramingError",
    "LineFragment",
    "LiteralAnnounced",
    "LiteralFragment",
]

#: 64 KiB, as Dovecot: a maximal RFC 2971 ID command (30 pairs, values of
#: 1,024 octets, quoted) is about 32 KB, and RFC 7162 section 4 asks for at
#: least 8,192 octets.
DEFAULT_MAX_LINE = 65536
DEFAULT_MAX_LITERAL = 50 * 1024 * 1024
DEFAULT_MAX_COMMAND = DEFAULT_MAX_LITERAL + 64 * 1024

# literal = "{" number ["+"] "}" CRLF *CHAR8   (RFC 3501 section 9, RFC 7888)
# literal8 = "~{" number ["+"] "}" CRLF *OCTET (RFC 3516 section 4.2)
_LITERAL_MARKER = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\Z")
# Octets kept from a skipped over-long line: enough for "~{<20 digits>+}\r".
_MARKER_TAIL = 32
# tag = 1*<any ASTRING-CHAR except "+">, then SP.  Longer tags than this are
# not echoed (the error goes out untagged), so a reply never repeats much input.
_MAX_TAG = 64
_TAG = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]{1,%d} " % _MAX_TAG)


@dataclass(frozen=True, slots=True)
class LineFragment:
    """A piece of a command line, without CRLF and without a literal marker."""

    data: bytes


@dataclass(frozen=True, slots=True)
class LiteralFragment:
    """The octets of a literal; ``binary`` for a literal8 (``~{n}``)."""

    data: bytes
    binary: bool = False


Fragment = LineFragment | LiteralFragment


@dataclass(frozen=True, slots=True)
class CommandFragments:
    """One complete command: line pieces and literals, in order."""

    fragments: tuple[Fragment, ...]

    @property
    def tag(self) -> str | None:
        """The tag, if the first line starts with one."""
        return _tag_of(self.fragments[0].data) if self.fragments else None


@dataclass(frozen=True, slots=True)
class LiteralAnnounced:
    """
    A line ended with a synchronizing literal of ``size`` octets.

    The framer is paused until :meth:`CommandFramer.accept_literal` or
    :meth:`CommandFramer.reject_literal`.
    """

    tag: str | None
    size: int
    synchronizing: bool = True
    binary: bool = False


@dataclass(frozen=True, slots=True)
class FramingError:
    """
    A command was dropped; answer ``tag BAD text`` (``tag`` may be ``None``:
    then ``* BAD text``).  ``code`` is a response code such as ``TOOBIG``
    (RFC 4469 section 4 / RFC 7889) or ``None``.
    """

    tag: str | None
    text: str
    code: str | None = None


Event = CommandFragments | LiteralAnnounced | FramingError


def _tag_of(line: bytes) -> str | None:
    m = _TAG.match(line)
    if m is None or b"+" in m.group():
        return None
    return m.group()[:-1].decode("ascii")


class _Mode(enum.Enum):
    LINE = "line"  # reading a command line
    LITERAL = "literal"  # reading literal octets
    PAUSED = "paused"  # waiting for accept_literal / reject_literal
    SKIP_LINE = "skip-line"  # discarding up to the next line end
    SKIP_LITERAL = "skip-literal"  # discarding literal octets


class CommandFramer:
    """
    Cut client input into IMAP commands.

    Args:
        max_line: octets of one line including its CRLF.
        max_literal: octets of one literal.
        max_command: octets of one whole command (lines and literals).
    """

    def __init__(
        self,
        max_line: int = DEFAULT_MAX_LINE,
        max_literal: int = DEFAULT_MAX_LITERAL,
        max_command: int = DEFAULT_MAX_COMMAND,
    ) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_command = max_command
        self._buffer = bytearray()
        self._scanned = 0  # octets of _buffer known to hold no LF
        self._events: deque[Event] = deque()
        self._mode = _Mode.LINE
        self._fragments: list[Fragment] = []
        self._command_size = 0
        self._tag: str | None = None
        self._remaining = 0  # octets of the literal being read or skipped
        self._binary = False
        self._literal = bytearray()

    # -- public API ---------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed octets from the network."""
        self._buffer += data
        self._run()

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more input (or a decision) is needed."""
        if not self._events:
            self._run()
        return self._events.popleft() if self._events else None

    @property
    def paused(self) -> bool:
        """Whether the framer waits for :meth:`accept_literal` / :meth:`reject_literal`."""
        return self._mode is _Mode.PAUSED

    def accept_literal(self) -> None:
        """The server sent ``+``: read the announced literal."""
        if self._mode is not _Mode.PAUSED:
            raise RuntimeError("no literal is waiting")
        self._mode = _Mode.LITERAL

    def reject_literal(self) -> None:
        """The server refused the literal: forget the command (the client sends the next one)."""
        if self._mode is not _Mode.PAUSED:
            raise RuntimeError("no literal is waiting")
        self._reset_command()
        self._mode = _Mode.LINE

    def drain(self) -> bytes:
        """
        Take every octet received but not yet framed, and forget the command
        being framed: after STARTTLS (RFC 3501 section 6.2.1) what the client
        pipelined is never parsed.
        """
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        self._events.clear()
        self._reset_command()
        self._mode = _Mode.LINE
        return rest

    @property
    def buffered(self) -> int:
        """Octets received but not yet framed (bounded by the limits while framing)."""
        return len(self._buffer)

    # -- the machine --------------------------------------------------------

    def _reset_command(self) -> None:
        self._fragments = []
        self._command_size = 0
        self._tag = None

    def _fail(self, text: str, code: str | None = None) -> None:
        self._events.append(FramingError(self._tag, text, code))

    def _run(self) -> None:
        while not self._events and self._step():
            pass

    def _step(self) -> bool:
        """Make progress; ``False`` when input (or a decision) is needed."""
        mode = self._mode
        if mode is _Mode.PAUSED:
            return False
        if mode is _Mode.LITERAL:
            return self._read_literal()
        if mode is _Mode.SKIP_LITERAL:
            n = min(self._remaining, len(self._buffer))
            del self._buffer[:n]
            self._remaining -= n
            if self._remaining:
                return False
            self._mode = _Mode.SKIP_LINE
            return True
        return self._read_line(skipping=mode is _Mode.SKIP_LINE)

    def _read_literal(self) -> bool:
        n = min(self._remaining, len(self._buffer))
        if self._remaining and not n:
            return False
        self._literal += self._buffer[:n]
        del self._buffer[:n]
        self._remaining -= n
        if self._remaining:
            return False
        self._fragments.append(LiteralFragment(bytes(self._literal), self._binary))
        self._literal = bytearray()
        self._mode = _Mode.LINE
        return True

    def _read_line(self, skipping: bool) -> bool:
        # A line that arrives in many small reads is searched for its LF
        # once, not from its start on every read.
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            if len(self._buffer) >= self.max_line:
                # Over-long line: drop what we have and skip to its end.
                if not skipping:
                    self._tag = self._tag if self._fragments else _tag_of(bytes(self._buffer))
                    self._fail("Line too long")
                    self._reset_command()
                    self._mode = _Mode.SKIP_LINE
                # Keep the tail: a literal marker ending the skipped line
                # may be split across reads.
                del self._buffer[:-_MARKER_TAIL]
                self._scanned = len(self._buffer)
                return bool(self._events)
            return False
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        if skipping:
            return self._skip_line(line)
        if end + 1 > self.max_line:
            if not self._fragments:
                self._tag = _tag_of(line)
            self._fail("Line too long")
            self._reset_command()
            self._skip_after(line)
            return True
        if not self._fragments:
            self._tag = _tag_of(line)
        self._command_size += end + 1
        if self._command_size > self.max_command:
            self._fail("Command too long", "TOOBIG")
            self._reset_command()
            self._skip_after(line)
            return True
        marker = _LITERAL_MARKER.search(line)
        if marker is None:
            self._fragments.append(LineFragment(line))
            self._events.append(CommandFragments(tuple(self._fragments)))
            self._reset_command()
            return True
        self._fragments.append(LineFragment(line[: marker.start()]))
        binary = bool(marker.group(1))
        synchronizing = not marker.group(3)
        digits = marker.group(2)
        size = int(digits) if len(digits) <= 20 else self.max_command + 1
        if size > self.max_literal or self._command_size + size > self.max_command:
            if synchronizing:
                # Refused before its octets are read (RFC 7888 section 4:
                # "the server MAY reject the command with a tagged BAD").
                self._fail("Literal too large", "TOOBIG")
                self._reset_command()
                return True
            self._fail("Literal too large", "TOOBIG")
            self._reset_command()
            self._remaining = size
            self._mode = _Mode.SKIP_LITERAL
            return True
        self._command_size += size
        self._remaining = size
        self._binary = binary
        if synchronizing:
            self._events.append(LiteralAnnounced(self._tag, size, True, binary))
            self._mode = _Mode.PAUSED
        else:
            self._mode = _Mode.LITERAL
        return True

    def _skip_after(self, line: bytes) -> None:
        """Continue skipping the command whose (dropped) line was *line*."""
        self._skip_line(line)

    def _skip_line(self, line: bytes) -> bool:
        # A skipped line that ends with a non-synchronizing literal is
        # followed by its octets; a synchronizing one is not sent (we never
        # answer "+"), so the command ends here.
        marker = _LITERAL_MARKER.search(line)
        if marker is not None and marker.group(3):
            digits = marker.group(2)
            self._remaining = int(digits) if len(digits) <= 20 else 1 << 64
            self._mode = _Mode.SKIP_LITERAL
        else:
            self._mode = _Mode.LINE
        return True
