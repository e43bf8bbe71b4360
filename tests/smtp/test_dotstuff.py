"""
Tests for txmail.smtp.dotstuff: the end-of-data mark, unstuffing, and the
SMTP smuggling regressions (CVE-2023-51764/51765/51766 payloads).
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txmail.smtp.dotstuff import DataDecoder, LineEndingChecker, dot_stuff

#: End-of-data look-alikes used in published SMTP smuggling attacks.  None of
#: them may end the data.
SMUGGLING_SEQUENCES = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r.\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\n\n.\n\n",
]

SMUGGLED = b"MAIL FROM:<admin@victim.test>\r\nRCPT TO:<x@victim.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx"


def decode(data: bytes, pieces: int | None = None) -> tuple[bytes, bytes | None, bool]:
    """Feed *data* whole (or split at every byte when pieces is 1); return content, rest, bare flag."""
    decoder = DataDecoder()
    content = []
    rest: bytes | None = None
    step = len(data) if pieces is None else pieces
    for i in range(0, max(len(data), 1), max(step, 1)):
        piece, rest = decoder.feed(data[i : i + step])
        content.append(piece)
        if rest is not None:
            # The remaining unfed input belongs to the rest too.
            rest += data[i + step :]
            break
    return b"".join(content), rest, decoder.bare_line_ending


def reference_unstuff(content: bytes) -> bytes:
    """RFC 5321 section 4.5.2 the slow way: drop one leading period of each CRLF line."""
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in content.split(b"\r\n"))


class DataDecoderTests(SynchronousTestCase):
    def check(self, data: bytes, content: bytes, rest: bytes | None, bare: bool = False) -> None:
        for pieces in (None, 1, 2, 3, 7):
            self.assertEqual(decode(data, pieces), (content, rest, bare), (data, pieces))

    def test_simple_message(self) -> None:
        """CRLF.CRLF ends the data; the CRLF before it belongs to the message."""
        self.check(b"Subject: x\r\n\r\nhello\r\n.\r\n", b"Subject: x\r\n\r\nhello\r\n", b"")

    def test_rest_after_end(self) -> None:
        """Bytes after the end mark are handed back as command input."""
        self.check(b"a\r\n.\r\nQUIT\r\n", b"a\r\n", b"QUIT\r\n")

    def test_empty_message(self) -> None:
        """A dot line right after DATA ends an empty message (DATA's CRLF is the first CRLF)."""
        self.check(b".\r\nNOOP\r\n", b"", b"NOOP\r\n")

    def test_unstuffing(self) -> None:
        """A leading period is removed from every line, including the first (RFC 5321 section 4.5.2)."""
        self.check(b"..a\r\n...\r\nb.c\r\n..\r\n.\r\n", b".a\r\n..\r\nb.c\r\n.\r\n", b"")

    def test_incomplete(self) -> None:
        """Without the end mark the content is returned and rest stays None."""
        self.check(b"a\r\n.", b"a\r\n", None)
        self.check(b"a\r\n.\r", b"a\r\n", None)
        self.check(b"a\r", b"a", None)

    def test_long_lines_pass(self) -> None:
        """Lines far longer than 1000 octets pass through unchanged (policy: accepted)."""
        line = b"x" * 5000 + b"\r\n"
        self.check(line + b".\r\n", line, b"")

    def test_smuggling_sequences_do_not_end_data(self) -> None:
        """Every known smuggling end mark is content: the smuggled commands stay inside the message."""
        for seq in SMUGGLING_SEQUENCES:
            data = b"Subject: a\r\n\r\nbody" + seq + SMUGGLED + b"\r\n.\r\n"
            expected = reference_unstuff(b"Subject: a\r\n\r\nbody" + seq + SMUGGLED + b"\r\n")
            bare = b"\n" in seq.replace(b"\r\n", b"") or b"\r" in seq.replace(b"\r\n", b"")
            self.check(data, expected, b"", bare)

    def test_no_unstuffing_after_bare_lf(self) -> None:
        """A period after a bare LF is not at a line start, so it is kept."""
        self.check(b"a\n..b\r\n.\r\n", b"a\n..b\r\n", b"", True)

    def test_bare_cr_before_crlf(self) -> None:
        """CR CR LF is a bare CR followed by a line end."""
        self.check(b"a\r\r\n.\r\n", b"a\r\r\n", b"", True)

    def test_feed_after_end_raises(self) -> None:
        """Feeding a finished decoder is the caller's mistake."""
        decoder = DataDecoder()
        decoder.feed(b".\r\n")
        self.assertRaises(RuntimeError, decoder.feed, b"x")

    def test_random_round_trip(self) -> None:
        """dot_stuff then decoding gives back random CRLF messages, however they are split."""
        rng = random.Random(5321)
        alphabet = [b".", b"\r\n", b"a", b"..", b"\r\n.", b" "]
        for _ in range(200):
            message = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
            if message and not message.endswith(b"\r\n"):
                message += b"\r\n"
            wire = dot_stuff(message) + b"NEXT"
            for pieces in (None, 1, rng.randint(1, 9)):
                self.assertEqual(decode(wire, pieces), (message, b"NEXT", False), (message, pieces))


class LineEndingCheckerTests(SynchronousTestCase):
    def run_checker(self, data: bytes, step: int) -> bool:
        checker = LineEndingChecker()
        for i in range(0, len(data), step):
            checker.feed(data[i : i + step])
        checker.finish()
        return checker.bare_line_ending

    def test_known_answers(self) -> None:
        """Only CRLF pairs are line ends; a CR split from its LF across pieces is still a pair."""
        table = [
            (b"a\r\nb\r\n", False),
            (b"", False),
            (b"a\nb", True),
            (b"a\rb", True),
            (b"a\r\r\n", True),
            (b"a\r", True),
            (b"\n", True),
        ]
        for data, bare in table:
            for step in (1, 2, 100):
                self.assertEqual(self.run_checker(data, step), bare, (data, step))


class DotStuffTests(SynchronousTestCase):
    def test_dot_stuff(self) -> None:
        """Leading periods are doubled, a final CRLF is added when missing, and the end mark appended."""
        self.assertEqual(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n")
        self.assertEqual(dot_stuff(b"x"), b"x\r\n.\r\n")
        self.assertEqual(dot_stuff(b""), b".\r\n")


def _reference_decode(data: bytes) -> tuple[bytes, bytes, bool] | None:
    """
    A slow, obviously correct decoder: lines start at 0 and after each CRLF;
    the first line that is exactly "." ends the data; a leading dot of any
    other line is dropped; a CR not before LF or an LF not after CR is bare.
    """
    starts = [0] + [i + 2 for i in range(len(data) - 1) if data[i : i + 2] == b"\r\n"]
    for p in starts:
        if data[p : p + 3] == b".\r\n":
            break
    else:
        return None
    content = bytearray()
    drop = {q for q in starts if q < p and data[q : q + 1] == b"."}
    for i in range(p):
        if i not in drop:
            content.append(data[i])
    region = data[:p]
    bare = any(
        (c == 0x0D and region[i + 1 : i + 2] != b"\n") or (c == 0x0A and region[i - 1 : i] != b"\r")
        for i, c in enumerate(region)
    )
    return bytes(content), data[p + 3 :], bare


class DataDecoderReferenceTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b".\r\n"]), max_size=30),
           st.lists(st.integers(min_value=0, max_value=200), max_size=5))
    def test_matches_reference(self, pieces: list[bytes], cuts: list[int]) -> None:
        """Fed in any split, the decoder agrees with a line-by-line reference decoder."""
        data = b"".join(pieces) + b"\r\n.\r\nNEXT"
        expected = _reference_decode(data)
        assert expected is not None
        points = sorted({min(c, len(data)) for c in cuts})
        chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
        decoder = DataDecoder()
        out = []
        rest = None
        for index, chunk in enumerate(chunks):
            content, rest = decoder.feed(chunk)
            out.append(content)
            if rest is not None:
                # what follows the end mark in this chunk, plus any later chunks
                rest += b"".join(chunks[index + 1 :])
                break
        self.assertTrue(decoder.done)
        self.assertEqual(b"".join(out), expected[0])
        self.assertEqual(rest, expected[1])
        self.assertEqual(decoder.bare_line_ending, expected[2])
