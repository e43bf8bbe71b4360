"""
DATA framing: the end-of-data mark, dot-unstuffing, bare CR/LF detection.

RFC 5321 section 4.1.1.4: "The mail data are terminated by a line containing
only a period, that is, the character sequence "<CRLF>.<CRLF>"".  Section
4.5.2: a line that starts with a period has that period removed.

Implementation notes (SMTP smuggling, CVE-2023-51764/51765/51766):

* **Only** ``<CRLF>.<CRLF>`` ends the data.  The first CRLF may be the one
  that ended the ``DATA`` command, so data beginning with ``.<CRLF>`` is an
  empty message.  ``<LF>.<LF>``, ``<CR>.<CR>``, ``<LF>.<CRLF>``,
  ``<CRLF>.<LF>``, ``<CR>.<CRLF>`` and friends are ordinary content.
* A "line" starts only after CRLF.  A period after a bare LF or bare CR is
  content and is *not* unstuffed, so no byte sequence can look like a line
  start to us without being one.
* Bare CR and bare LF are never rewritten (normalising bare LF to CRLF is
  what turned ``<LF>.<LF>`` into a terminator in the vulnerable servers);
  they are kept and reported through :attr:`DataDecoder.bare_line_ending`.
  The session refuses such a message once the data ends (``550 5.6.0``),
  because RFC 5321 section 2.3.8 says clients "MUST NOT transmit these
  characters except when they are intended as line terminators and then
  MUST ... transmit them only as a <CRLF> sequence", and a stored message
  with bare line ends could smuggle through a weaker server when relayed on.
* Long lines are not limited here: the decoder never holds a line, only at
  most two bytes that may start a terminator.  See the session for the
  long-line policy.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

__all__ = ["DataDecoder", "LineEndingChecker", "dot_stuff"]

_CR = 0x0D
_LF = 0x0A
_DOT = 0x2E
_TERMINATOR = b".\r\n"


class DataDecoder:
    """
    Streaming decoder of the content that follows ``DATA`` and its 354 reply.

    Feed it bytes as they come; it returns the unstuffed content so far and,
    once ``<CRLF>.<CRLF>`` is seen, the bytes that followed it.

    Attributes:
        bare_line_ending: a bare CR or bare LF was seen in the content.
        done: the end-of-data mark was seen.
    """

    def __init__(self) -> None:
        self._at_line_start = True  # DATA<CRLF> counts as the first CRLF
        self._held = b""
        self.bare_line_ending = False
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """
        Decode more content.

        Returns:
            ``(content, rest)``: *content* is the unstuffed message bytes
            decoded so far (possibly empty); *rest* is ``None`` while the data
            goes on, else the bytes after the end-of-data mark (possibly
            ``b""``), which belong to the command stream.

        Raises:
            RuntimeError: called after the end was found (caller's mistake).
        """
        if self.done:
            raise RuntimeError("DataDecoder fed after the end of data")
        buf = self._held + data if self._held else data
        self._held = b""
        n = len(buf)
        if n == 0:
            return b"", None
        # Only lines that start with a dot after a real CRLF matter; find
        # them with bytes.find instead of walking every line.  A dot after a
        # bare LF or CR starts no line: it is neither unstuffed nor an end.
        out: list[bytes] = []
        emit_from = 0
        pos = 0 if self._at_line_start else -1
        search_from = 0
        while True:
            if pos < 0:
                k = buf.find(b"\r\n.", search_from)
                if k < 0:
                    break
                pos = k + 2
            if buf[pos] != _DOT:
                pos = -1
                continue
            head = buf[pos : pos + 3]
            if head == _TERMINATOR:
                self._check_line_endings(buf, pos)
                out.append(buf[emit_from:pos])
                self.done = True
                return b"".join(out), buf[pos + 3 :]
            if len(head) < 3 and _TERMINATOR.startswith(head):
                # Maybe the end mark; wait for the next bytes.
                self._check_line_endings(buf, pos)
                out.append(buf[emit_from:pos])
                self._held = head
                self._at_line_start = True
                return b"".join(out), None
            # RFC 5321 section 4.5.2: drop the first period of the line.
            out.append(buf[emit_from:pos])
            emit_from = pos + 1
            search_from = pos + 1
            pos = -1
        end = n
        if buf[-1] == _CR:
            # Maybe the CR of a CRLF split across reads: decide next time.
            end = n - 1
            self._held = b"\r"
            self._at_line_start = False
        else:
            self._at_line_start = buf.endswith(b"\r\n")
        self._check_line_endings(buf, end)
        out.append(buf[emit_from:end])
        return b"".join(out), None

    def _check_line_endings(self, buf: bytes, end: int) -> None:
        """Note a bare CR or LF in ``buf[:end]`` (every CR and LF there is final)."""
        if self.bare_line_ending:
            return
        region = buf[:end] if end < len(buf) else buf
        crlf = region.count(b"\r\n")
        if region.count(b"\r") != crlf or region.count(b"\n") != crlf:
            self.bare_line_ending = True


class LineEndingChecker:
    """
    Detects bare CR or bare LF in a byte stream fed in pieces (used for BDAT
    content, which has no dot framing but the same line-ending rule).

    Attributes:
        bare_line_ending: a bare CR or LF was seen so far.
    """

    def __init__(self) -> None:
        self._pending_cr = False
        self.bare_line_ending = False

    def feed(self, data: bytes) -> None:
        """Check more bytes; a CR at the end waits for the next piece."""
        if not data:
            return
        buf = b"\r" + data if self._pending_cr else data
        self._pending_cr = buf.endswith(b"\r")
        if self._pending_cr:
            buf = buf[:-1]
        crlf = buf.count(b"\r\n")
        if buf.count(b"\r") != crlf or buf.count(b"\n") != crlf:
            self.bare_line_ending = True

    def finish(self) -> None:
        """The stream ended: a trailing CR is bare."""
        if self._pending_cr:
            self.bare_line_ending = True
            self._pending_cr = False


def dot_stuff(message: bytes) -> bytes:
    """
    Encode *message* for DATA (RFC 5321 section 4.5.2): double the period at
    the start of each line and add the end-of-data mark.  A message not
    ending in CRLF gets one.  The inverse of :class:`DataDecoder` for
    messages with CRLF line ends (used by tests; the SMTP client streams with
    :class:`txmail.smtp.client.DotStuffer`).
    """
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"
