"""Tests for :mod:`txmail.mime`: metadata, ENVELOPE, BODYSTRUCTURE and sections."""

from __future__ import annotations

import io
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txmail import mime
from txmail.mime import (
    EMPTY_BODY_STRUCTURE,
    decode_metadata,
    encode_metadata,
    extract_section,
    header_fields,
    parse_metadata,
)
from txmail.model import MessageMetadata


def leaf(ctype: bytes, body: bytes, extra: bytes = b"") -> bytes:
    """A body part entity: a Content-Type field, *extra* fields, blank line, body."""
    return b"Content-Type: " + ctype + b"\r\n" + extra + b"\r\n" + body


def multipart(subtype: bytes, boundary: bytes, parts: list[bytes], extra: bytes = b"") -> bytes:
    """A multipart entity whose parts are *parts*, with a closing delimiter."""
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + b"--\r\n"
    return (
        b"Content-Type: multipart/" + subtype + b"; boundary=" + boundary + b"\r\n" + extra + b"\r\n" + body
    )


def rfc822(message: bytes) -> bytes:
    """A MESSAGE/RFC822 entity encapsulating *message*."""
    return b"Content-Type: message/rfc822\r\n\r\n" + message


def body_of(entity: bytes) -> bytes:
    """The octets after an entity's header section."""
    return entity.split(b"\r\n\r\n", 1)[1]


def all_strings(value: Any) -> list[str]:
    """Every str inside a nested tuple."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, tuple):
        return [s for v in value for s in all_strings(v)]
    return []


# The shape of the example in RFC 3501 section 6.4.5.
TEXT_1 = b"part one\r\nline two"
OCTETS_2 = b"AAECAw=="
TEXT_31 = b"inner text"
OCTETS_32 = b"BAUG"
GIF_41 = b"R0lGODlh"
TEXT_4221 = b"alt plain"
RICH_4222 = b"<bold>alt rich</bold>"
INNER_3 = b"Subject: three\r\nFrom: c@d\r\nMIME-Version: 1.0\r\n" + multipart(
    b"mixed",
    b"in3",
    [leaf(b"text/plain", TEXT_31), leaf(b"application/octet-stream", OCTETS_32)],
)
ALT_422 = multipart(
    b"alternative", b"alt", [leaf(b"text/plain", TEXT_4221), leaf(b"text/richtext", RICH_4222)]
)
INNER_42 = b"Subject: four-two\r\n" + multipart(b"mixed", b"in42", [leaf(b"text/plain", TEXT_4221), ALT_422])
PART_4 = multipart(b"mixed", b"p4", [leaf(b"image/gif", GIF_41), rfc822(INNER_42)])
RFC_EXAMPLE = b"Subject: sections\r\nFrom: a@b\r\n" + multipart(
    b"mixed",
    b"outer",
    [
        leaf(b"text/plain", TEXT_1),
        leaf(b"application/octet-stream", OCTETS_2, b"Content-Transfer-Encoding: base64\r\n"),
        rfc822(INNER_3),
        PART_4,
    ],
)


class HeaderTests(SynchronousTestCase):
    def test_header_size_and_fields(self) -> None:
        """The header section size counts the blank line and the fields keep their raw octets."""
        head = b"Subject: hi\r\nX-Folded: one\r\n two\r\nFrom : a@b\r\n\r\n"
        md = parse_metadata(head + b"body\r\n")
        self.assertEqual(md.header_size, len(head))
        self.assertEqual(
            md.headers,
            (("Subject", " hi\r\n"), ("X-Folded", " one\r\n two\r\n"), ("From ", " a@b\r\n")),
        )
        self.assertEqual("".join(f"{n}:{v}" for n, v in md.headers).encode("latin-1") + b"\r\n", head)

    def test_no_separator(self) -> None:
        """Without a blank line the whole message is header and the body is empty."""
        data = b"Subject: hi\r\nFrom: a@b\r\n"
        md = parse_metadata(data)
        self.assertEqual(md.header_size, len(data))
        self.assertEqual(md.lines, 0)
        self.assertEqual(md.body_structure[6], 0)
        self.assertEqual(md.envelope[1], "hi")

    def test_lf_only(self) -> None:
        """LF-only line ends are accepted and counted as they are stored."""
        md = parse_metadata(b"Subject: x\n\nline1\nline2\n")
        self.assertEqual(md.header_size, 12)
        self.assertEqual(md.headers, (("Subject", " x\n"),))
        self.assertEqual(md.body_structure[6:8], (12, 2))
        self.assertEqual(md.lines, 2)

    def test_garbage_lines_dropped(self) -> None:
        """Lines that are neither fields nor continuations are left out of the fields."""
        md = parse_metadata(
            b" orphan\r\nFrom a@b Mon Jan 1 00:00:00 2024\r\nX: 1\r\nnot a field\r\n cont\r\n\r\n"
        )
        self.assertEqual(md.headers, (("X", " 1\r\n"),))

    def test_8bit_header_round_trips(self) -> None:
        """Raw 8-bit header octets come back exactly through latin-1."""
        head = "Subject: caf\u00e9 \xff\r\n\r\n".encode("latin-1")
        md = parse_metadata(head)
        self.assertEqual(f"{md.headers[0][0]}:{md.headers[0][1]}".encode("latin-1"), head[:-2])
        self.assertEqual(md.envelope[1], "caf\u00e9 \xff")

    def test_header_fields(self) -> None:
        """header_fields selects fields case-insensitively, in order, and ends with a blank line."""
        md = parse_metadata(b"From: a@b\r\nTo: c@d\r\nSubject: s\r\n x\r\nTO: e@f\r\n\r\nbody")
        self.assertEqual(
            header_fields(md, ["to", "SUBJECT"]),
            b"To: c@d\r\nSubject: s\r\n x\r\nTO: e@f\r\n\r\n",
        )
        self.assertEqual(header_fields(md, ["to", "subject"], exclude=True), b"From: a@b\r\n\r\n")
        self.assertEqual(header_fields(md, ["nothing"]), b"\r\n")

    def test_header_fields_name_spellings(self) -> None:
        """
        Each spelling of a name is judged once per list and kept: blanks before
        the colon, other cases, in both directions, and past
        the bound on remembered spellings.
        """
        md = parse_metadata("To \t: c@d\r\nTO: e@f\r\nx-Ab: g\r\nFrom: a@b\r\n\r\n".encode("latin-1"))
        names = ("to", "X-AB")
        for _ in range(2):  # the second time from the remembered spellings
            self.assertEqual(
                header_fields(md, names), "To \t: c@d\r\nTO: e@f\r\nx-Ab: g\r\n\r\n".encode("latin-1")
            )
            self.assertEqual(header_fields(md, names, exclude=True), b"From: a@b\r\n\r\n")
        many = parse_metadata(b"".join(b"X-%d: v\r\n" % i for i in range(5000)) + b"To: z\r\n\r\n")
        self.assertEqual(header_fields(many, ("to", "x-4999")), b"X-4999: v\r\nTo: z\r\n\r\n")
        self.assertEqual(header_fields(many, ("to", "x-4999")), b"X-4999: v\r\nTo: z\r\n\r\n")

    def test_header_fields_adds_missing_line_end(self) -> None:
        """A last field without a line end still ends with CRLF before the blank line."""
        md = parse_metadata(b"Subject: s")
        self.assertEqual(header_fields(md, ["subject"]), b"Subject: s\r\n\r\n")


class EnvelopeTests(SynchronousTestCase):
    def test_rfc3501_example(self) -> None:
        """The ENVELOPE example of RFC 3501 section 7.4.2 comes out exactly."""
        data = (
            b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
            b"From: Terry Gray <gray@cac.washington.edu>\r\n"
            b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
            b"To: imap@cac.washington.edu\r\n"
            b'cc: minutes@CNRI.Reston.VA.US,\r\n "John Klensin" <KLENSIN@MIT.EDU>\r\n'
            b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\nhello\r\n"
        )
        gray = (("Terry Gray", None, "gray", "cac.washington.edu"),)
        self.assertEqual(
            parse_metadata(data).envelope,
            (
                "Wed, 17 Jul 1996 02:23:25 -0700 (PDT)",
                "IMAP4rev1 WG mtg summary and minutes",
                gray,
                gray,
                gray,
                ((None, None, "imap", "cac.washington.edu"),),
                ((None, None, "minutes", "CNRI.Reston.VA.US"), ("John Klensin", None, "KLENSIN", "MIT.EDU")),
                None,
                None,
                "<B27397-0100000@cac.washington.edu>",
            ),
        )

    def test_missing_headers_are_nil(self) -> None:
        """Absent fields are NIL, present but empty ones are the empty string."""
        md = parse_metadata(b"Subject:\r\nTo:\r\n\r\nbody")
        self.assertEqual(md.envelope, (None, "", None, None, None, None, None, None, None, None))

    def test_sender_and_reply_to_explicit(self) -> None:
        """Sender and Reply-To are used when present and non-empty."""
        md = parse_metadata(b"From: a@b\r\nSender: s@t\r\nReply-To:\r\n\r\n")
        self.assertEqual(md.envelope[2], ((None, None, "a", "b"),))
        self.assertEqual(md.envelope[3], ((None, None, "s", "t"),))
        self.assertEqual(md.envelope[4], ((None, None, "a", "b"),))

    def test_group_syntax(self) -> None:
        """Groups are bracketed by a NIL-host start marker and an all-NIL end marker."""
        md = parse_metadata(b'To: "Team A": x@y, Zed <z@w>;, undisclosed-recipients:;, after@end\r\n\r\n')
        self.assertEqual(
            md.envelope[5],
            (
                (None, None, "Team A", None),
                (None, None, "x", "y"),
                ("Zed", None, "z", "w"),
                (None, None, None, None),
                (None, None, "undisclosed-recipients", None),
                (None, None, None, None),
                (None, None, "after", "end"),
            ),
        )

    def test_address_forms(self) -> None:
        """Route, comment names, quoted local parts, encoded words and host-less addresses parse."""
        md = parse_metadata(
            b'To: <@r1,@r2:u@h>, v@h (Old Name), "odd local"@h,\r\n'
            b" =?utf-8?q?J=C3=B6rg?= <j@h>, root, <>, John Q. Public <jqp@[1.2.3.4]>\r\n\r\n"
        )
        self.assertEqual(
            md.envelope[5],
            (
                (None, "@r1,@r2", "u", "h"),
                ("Old Name", None, "v", "h"),
                (None, None, '"odd local"', "h"),
                ("=?utf-8?q?J=C3=B6rg?=", None, "j", "h"),
                (None, None, "root", ""),
                (None, None, "", ""),
                ("John Q. Public", None, "jqp", "[1.2.3.4]"),
            ),
        )

    def test_unfolded_values(self) -> None:
        """Envelope strings are unfolded and stripped but otherwise raw."""
        md = parse_metadata(b"Subject:  =?iso-8859-1?q?a?=\r\n  b \r\nIn-Reply-To: <x@y>\r\n\r\n")
        self.assertEqual(md.envelope[1], "=?iso-8859-1?q?a?=  b")
        self.assertEqual(md.envelope[8], "<x@y>")


class BodyStructureTests(SynchronousTestCase):
    def test_rfc3501_example(self) -> None:
        """The BODYSTRUCTURE example of RFC 3501 section 7.4.2 comes out with its extension data."""
        text = b"line\r\n" * 22 + b"last"
        encoded = b"QUJD\r\n" * 72 + b"QUJD"
        data = b"Subject: x\r\nMIME-Version: 1.0\r\n" + multipart(
            b"MIXED",
            b"sep",
            [
                leaf(b"TEXT/PLAIN; CHARSET=US-ASCII", text),
                leaf(
                    b'TEXT/PLAIN; CHARSET=US-ASCII; NAME="cc.diff"',
                    encoded,
                    b"Content-ID: <960723163407.20117h@cac.washington.edu>\r\n"
                    b"Content-Description: Compiler diff\r\n"
                    b"Content-Transfer-Encoding: BASE64\r\n",
                ),
            ],
        )
        self.assertEqual(
            parse_metadata(data).body_structure,
            (
                (
                    "TEXT",
                    "PLAIN",
                    ("CHARSET", "US-ASCII"),
                    None,
                    None,
                    "7BIT",
                    len(text),
                    23,
                    None,
                    None,
                    None,
                    None,
                ),
                (
                    "TEXT",
                    "PLAIN",
                    ("CHARSET", "US-ASCII", "NAME", "cc.diff"),
                    "<960723163407.20117h@cac.washington.edu>",
                    "Compiler diff",
                    "BASE64",
                    len(encoded),
                    73,
                    None,
                    None,
                    None,
                    None,
                ),
                "MIXED",
                ("BOUNDARY", "sep"),
                None,
                None,
                None,
            ),
        )

    def test_default_content_type(self) -> None:
        """A message without Content-Type is TEXT/PLAIN in US-ASCII, 7BIT."""
        md = parse_metadata(b"Subject: x\r\n\r\nhello\r\nworld\r\n")
        self.assertEqual(
            md.body_structure,
            ("TEXT", "PLAIN", ("CHARSET", "US-ASCII"), None, None, "7BIT", 14, 2, None, None, None, None),
        )

    def test_invalid_content_type(self) -> None:
        """A syntactically invalid Content-Type falls back to the default (RFC 2045 section 5.2)."""
        md = parse_metadata(b"Content-Type: garbage\r\n\r\nx")
        self.assertEqual(md.body_structure[:3], ("TEXT", "PLAIN", ("CHARSET", "US-ASCII")))

    def test_no_invented_charset(self) -> None:
        """A text Content-Type without charset gets no charset parameter."""
        md = parse_metadata(b"Content-Type: text/html\r\n\r\n<p>")
        self.assertEqual(md.body_structure[:3], ("TEXT", "HTML", None))

    def test_attachment_extension_data(self) -> None:
        """Disposition, language, location and MD5 appear as extension data."""
        att = leaf(
            b'application/pdf; name="a b.pdf"',
            b"JVBERi0=",
            b"Content-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment;\r\n filename="a b.pdf"; size=6\r\n'
            b"Content-Language: en, de (comment)\r\n"
            b"Content-Location: http://example.com/a.pdf\r\n"
            b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n",
        )
        data = multipart(b"mixed", b"==b==", [leaf(b"text/plain; charset=utf-8", b"see attached"), att])
        bs = parse_metadata(b"From: a@b\r\n" + data).body_structure
        self.assertEqual(
            bs[1],
            (
                "APPLICATION",
                "PDF",
                ("NAME", "a b.pdf"),
                None,
                None,
                "BASE64",
                8,
                "Q2hlY2sgSW50ZWdyaXR5IQ==",
                ("ATTACHMENT", ("FILENAME", "a b.pdf", "SIZE", "6")),
                ("en", "de"),
                "http://example.com/a.pdf",
            ),
        )
        self.assertEqual(bs[2:], ("MIXED", ("BOUNDARY", "==b=="), None, None, None))

    def test_nested_message(self) -> None:
        """A MESSAGE/RFC822 part carries the envelope, body and line count of its message."""
        inner = b"Subject: inner\r\nFrom: x@y\r\n\r\ninner body\r\n"
        bs = parse_metadata(b"Subject: outer\r\n" + multipart(b"mixed", b"b", [rfc822(inner)])).body_structure
        part = bs[0]
        self.assertEqual(part[:7], ("MESSAGE", "RFC822", None, None, None, "7BIT", len(inner)))
        self.assertEqual(part[7][1], "inner")
        self.assertEqual(part[7][2], ((None, None, "x", "y"),))
        self.assertEqual(
            part[8],
            ("TEXT", "PLAIN", ("CHARSET", "US-ASCII"), None, None, "7BIT", 12, 1, None, None, None, None),
        )
        self.assertEqual(part[9], 4)
        self.assertEqual(part[10:], (None, None, None, None))

    def test_section_example_shape(self) -> None:
        """The RFC 3501 section 6.4.5 example message has the nested shape it describes."""
        bs = parse_metadata(RFC_EXAMPLE).body_structure
        self.assertEqual([p if isinstance(p, str) else p[:2] for p in bs[:5]][4], "MIXED")
        self.assertEqual(bs[0][:2], ("TEXT", "PLAIN"))
        self.assertEqual(bs[1][:2], ("APPLICATION", "OCTET-STREAM"))
        self.assertEqual(bs[2][:2], ("MESSAGE", "RFC822"))
        self.assertEqual(bs[2][8][-5], "MIXED")
        four = bs[3]
        self.assertEqual(four[0][:2], ("IMAGE", "GIF"))
        self.assertEqual(four[1][:2], ("MESSAGE", "RFC822"))
        alternative = four[1][8][1]
        self.assertEqual(alternative[0][:2], ("TEXT", "PLAIN"))
        self.assertEqual(alternative[1][:2], ("TEXT", "RICHTEXT"))
        self.assertEqual(alternative[2], "ALTERNATIVE")

    def test_digest_default(self) -> None:
        """Parts of a multipart/digest default to MESSAGE/RFC822 (RFC 2046 section 5.1.5)."""
        data = b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: one\r\n\r\nbody\r\n--d--\r\n"
        part = parse_metadata(data).body_structure[0]
        self.assertEqual(part[:2], ("MESSAGE", "RFC822"))
        self.assertEqual(part[7][1], "one")

    def test_outer_boundary_ends_inner_parts(self) -> None:
        """An enclosing boundary ends an inner multipart that lacks its close delimiter."""
        data = (
            b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n"
            b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
            b"--inner\r\n\r\nA\r\n--outer\r\n\r\nB\r\n--outer--\r\n"
        )
        bs = parse_metadata(data).body_structure
        self.assertEqual(bs[0][0][6], 1)
        self.assertEqual(bs[0][1], "ALTERNATIVE")
        self.assertEqual(bs[1][6], 1)
        self.assertEqual(extract_section(data, "2"), b"B")

    def test_missing_boundary(self) -> None:
        """A multipart without parts shows one empty TEXT/PLAIN part."""
        for data in (
            b"Content-Type: multipart/mixed\r\n\r\nno boundary parameter\r\n",
            b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nno delimiter line\r\n",
        ):
            bs = parse_metadata(data).body_structure
            self.assertEqual(bs[0], EMPTY_BODY_STRUCTURE)
            self.assertEqual(bs[1], "MIXED")

    def test_unclosed_multipart(self) -> None:
        """A multipart whose close delimiter is missing ends its last part at the end of the message."""
        data = b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n\r\nlast part\r\n"
        self.assertEqual(parse_metadata(data).body_structure[0][6:8], (11, 1))

    def test_boundary_padding_and_near_misses(self) -> None:
        """Trailing white space after a delimiter is allowed; longer look-alike lines are body."""
        data = b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q \t\r\n\r\nx\r\n--qq\r\n--q--  \r\n"
        bs = parse_metadata(data).body_structure
        self.assertEqual(len(bs), 6)
        self.assertEqual(extract_section(data, "1"), b"x\r\n--qq")

    def test_lf_only_multipart(self) -> None:
        """A multipart with LF line ends finds its parts and sizes."""
        data = (
            b"Content-Type: multipart/mixed; boundary=q\n\n--q\nContent-Type: text/plain\n\nab\ncd\n--q--\n"
        )
        bs = parse_metadata(data).body_structure
        self.assertEqual(bs[0][6:8], (5, 2))
        self.assertEqual(extract_section(data, "1"), b"ab\ncd")

    def test_rfc2231_continuations(self) -> None:
        """RFC 2231 continuations are joined; an encoded sequence stays encoded."""
        data = leaf(
            b'application/x; title*0="a "; title*1="b";\r\n'
            b" name*0*=utf-8''%E2%82; name*1*=%AC; name*2=\" x\"",
            b"",
        )
        self.assertEqual(
            parse_metadata(data).body_structure[2],
            ("TITLE", "a b", "NAME*", "utf-8''%E2%82%AC%20x"),
        )

    def test_depth_limit(self) -> None:
        """Nesting beyond MAX_DEPTH is treated as opaque instead of recursing further."""
        self.patch(mime, "MAX_DEPTH", 4)
        data = b"x"
        for _ in range(10):
            data = rfc822(data)
        bs = parse_metadata(data).body_structure
        envelopes = []
        while bs[:2] == ("MESSAGE", "RFC822"):
            envelopes.append(bs[7])
            bs = bs[8]
        self.assertEqual(len(envelopes), 5)
        self.assertEqual(envelopes[-1], mime.EMPTY_ENVELOPE)
        self.assertEqual(bs, EMPTY_BODY_STRUCTURE)

    def test_part_limit(self) -> None:
        """No more than MAX_PARTS parts are made; later delimiters stay in the last part."""
        self.patch(mime, "MAX_PARTS", 3)
        data = multipart(b"mixed", b"q", [b"\r\na", b"\r\nb", b"\r\nc", b"\r\nd"])
        bs = parse_metadata(data).body_structure
        self.assertEqual(len(bs), 3 + 5)
        self.assertEqual(extract_section(data, "3"), b"c\r\n--q\r\n\r\nd")


class SectionTests(SynchronousTestCase):
    def test_rfc3501_section_table(self) -> None:
        """Every section of the RFC 3501 section 6.4.5 example gives the octets it names."""
        inner3_head, inner3_text = INNER_3.split(b"\r\n\r\n", 1)
        inner42_head, inner42_text = INNER_42.split(b"\r\n\r\n", 1)
        table = {
            "HEADER": RFC_EXAMPLE.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n",
            "TEXT": body_of(RFC_EXAMPLE),
            "1": TEXT_1,
            "1.MIME": b"Content-Type: text/plain\r\n\r\n",
            "2": OCTETS_2,
            "3": INNER_3,
            "3.HEADER": inner3_head + b"\r\n\r\n",
            "3.TEXT": inner3_text,
            "3.1": TEXT_31,
            "3.2": OCTETS_32,
            "3.HEADER.FIELDS (from subject)": b"Subject: three\r\nFrom: c@d\r\n\r\n",
            "4": body_of(PART_4),
            "4.1": GIF_41,
            "4.1.MIME": b"Content-Type: image/gif\r\n\r\n",
            "4.2": INNER_42,
            "4.2.HEADER": inner42_head + b"\r\n\r\n",
            "4.2.TEXT": inner42_text,
            "4.2.1": TEXT_4221,
            "4.2.2": body_of(ALT_422),
            "4.2.2.1": TEXT_4221,
            "4.2.2.2": RICH_4222,
            "4.2.2.2.MIME": b"Content-Type: text/richtext\r\n\r\n",
        }
        for section, expected in table.items():
            self.assertEqual((section, extract_section(RFC_EXAMPLE, section)), (section, expected))

    def test_missing_and_inapplicable(self) -> None:
        """Missing parts, specifiers on non-message parts and malformed specs give nothing."""
        for section in [
            "5",
            "1.2",
            "4.3",
            "1.HEADER",
            "4.TEXT",
            "MIME",
            "0",
            "1.",
            "HEADER.FIELDS",
            "TEXT (a)",
            "HEADER.FIELDS (a",
            "bogus",
            "1.2.3.4.5.6.7",
            "99999999999999",
        ]:
            self.assertEqual((section, extract_section(RFC_EXAMPLE, section)), (section, b""))

    def test_whole_and_case(self) -> None:
        """The empty section is the whole message and specifiers are case-insensitive."""
        self.assertEqual(extract_section(RFC_EXAMPLE, ""), RFC_EXAMPLE)
        self.assertEqual(extract_section(RFC_EXAMPLE, "3.header"), extract_section(RFC_EXAMPLE, "3.HEADER"))

    def test_single_part_message(self) -> None:
        """A non-multipart message's part 1 is its body and its MIME header is the message header."""
        data = b"Subject: s\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
        self.assertEqual(extract_section(data, "1"), b"body\r\n")
        self.assertEqual(extract_section(data, "1.MIME"), b"Subject: s\r\nContent-Type: text/plain\r\n\r\n")
        self.assertEqual(extract_section(data, "2"), b"")

    def test_header_fields_sections(self) -> None:
        """HEADER.FIELDS and .NOT accept quoted names and end with the blank line."""
        data = b"From: a@b\r\nTo: c@d\r\nX-Y: 1\r\n\r\nbody"
        self.assertEqual(extract_section(data, 'HEADER.FIELDS ("To" x-y)'), b"To: c@d\r\nX-Y: 1\r\n\r\n")
        self.assertEqual(extract_section(data, "HEADER.FIELDS.NOT (TO X-Y)"), b"From: a@b\r\n\r\n")

    def test_top_level_message_rfc822(self) -> None:
        """A message whose body is MESSAGE/RFC822 numbers the encapsulated message's parts below 1."""
        inner = b"Subject: in\r\n\r\ninner body"
        data = b"Subject: out\r\n" + rfc822(inner)
        self.assertEqual(extract_section(data, "1"), inner)
        self.assertEqual(extract_section(data, "1.HEADER"), b"Subject: in\r\n\r\n")
        self.assertEqual(extract_section(data, "1.1"), b"inner body")
        self.assertEqual(parse_metadata(data).body_structure[7][1], "in")


class SerialisationTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """decode_metadata(encode_metadata(m)) == m, tuples included."""
        for data in (RFC_EXAMPLE, b"", b"\xff\xfe\r\n\r\n", "Subject: \u00e9\r\n\r\n".encode("latin-1")):
            md = parse_metadata(data)
            back = decode_metadata(encode_metadata(md))
            self.assertEqual(back, md)
            self.assertIsInstance(back.body_structure, tuple)
            self.assertIsInstance(back.headers[0] if back.headers else (), tuple)

    def test_damaged_cache(self) -> None:
        """Damaged cache data raises ValueError."""
        for data in (
            b"",
            b"[",
            b"{}",
            b"[2,0,[],[],[],0]",
            b'[1,"x",[],[],[],0]',
            b"[1,0,[1,2],[],[],0]",  # header fields that are not pairs
            b"[1,0,[],[null,null,[1]],[],0]",  # an address list of non-lists
        ):
            self.assertRaises(ValueError, decode_metadata, data)


class CacheFormatTests(SynchronousTestCase):
    """The cache format 2 (marshal, CRC-checked, structures loaded on first use) and format 1 (JSON)."""

    def messages(self) -> list[bytes]:
        nested = b"Subject: outer\r\n" + multipart(
            b"mixed", b"X", [leaf(b"text/plain", b"a\r\nb"), rfc822(b"From: x@y\r\nSubject: in\r\n\r\nhi")]
        )
        return [RFC_EXAMPLE, nested, b"", b"\xff\xfe\r\n\r\n", "Subject: \u00e9\r\n\r\n".encode("latin-1")]

    def test_structures_loaded_on_first_use(self) -> None:
        """The header fields come at once; envelope and structure on first use, equal to the parse."""
        for data in self.messages():
            md = parse_metadata(data)
            back = decode_metadata(encode_metadata(md))
            self.assertFalse(back.is_complete)
            self.assertEqual((back.header_size, back.headers), (md.header_size, tuple(md.headers)))
            self.assertFalse(back.is_complete)
            self.assertEqual(back.body_structure, md.body_structure)
            self.assertTrue(back.is_complete)
            self.assertEqual((back.envelope, back.lines), (md.envelope, md.lines))
            self.assertEqual(back, md)
            self.assertEqual(hash(back), hash(md))

    def test_format_1_still_read(self) -> None:
        """A record of the JSON format (caches written before format 2) decodes to the same metadata."""
        import json

        for data in self.messages():
            md = parse_metadata(data)
            old = json.dumps(
                [1, md.header_size, md.headers, md.envelope, md.body_structure, md.lines],
                separators=(",", ":"),
            ).encode("ascii")
            self.assertEqual(decode_metadata(old), md)
            self.assertTrue(encode_metadata(md).startswith(b"\x00M2"))

    def test_damaged_record(self) -> None:
        """Any changed, missing or added octet of a format 2 record is a ValueError, not a wrong answer."""
        encoded = encode_metadata(parse_metadata(RFC_EXAMPLE))
        for i in range(len(encoded)):
            damaged = encoded[:i] + bytes([encoded[i] ^ 0x20]) + encoded[i + 1 :]
            self.assertRaises(ValueError, decode_metadata, damaged)
        for cut in (1, 3, 8, 11, 12, len(encoded) // 2, len(encoded) - 1):
            self.assertRaises(ValueError, decode_metadata, encoded[:cut])
        self.assertRaises(ValueError, decode_metadata, encoded + b"x")

    def test_immutable(self) -> None:
        """Metadata cannot be changed, decoded lazily or not."""
        for md in (
            parse_metadata(RFC_EXAMPLE),
            decode_metadata(encode_metadata(parse_metadata(RFC_EXAMPLE))),
        ):
            self.assertRaises(AttributeError, setattr, md, "header_size", 1)
            self.assertRaises(AttributeError, setattr, md, "envelope", ())


class LargeInputTests(SynchronousTestCase):
    def test_file_object(self) -> None:
        """A 5 MB message read from a file object parses with exact sizes and line counts."""
        chunk = os.urandom(3 * 19)
        import base64

        line = base64.b64encode(chunk) + b"\r\n"  # 78 octets
        count = 5 * 1024 * 1024 // len(line)
        attachment = line * count
        text = b"-- \r\nsig --\r\n--not-a-boundary\r\n" * 1000
        data = b"From: a@b\r\nSubject: big\r\n" + multipart(
            b"mixed",
            b"BIG",
            [
                leaf(b"text/plain", text[:-2]),
                leaf(b"application/octet-stream", attachment[:-2], b"Content-Transfer-Encoding: base64\r\n"),
            ],
        )
        f = io.BytesIO(b"prefix" + data)
        f.seek(6)
        md = parse_metadata(f)
        self.assertEqual(md.body_structure[0][6:8], (len(text) - 2, 3000))
        self.assertEqual(md.body_structure[1][6], len(attachment) - 2)
        self.assertEqual(md, parse_metadata(data))

    def test_small_chunks_match(self) -> None:
        """Reading in tiny chunks gives the same answer as parsing the bytes."""
        self.patch(mime, "_CHUNK", 3)
        self.assertEqual(parse_metadata(io.BytesIO(RFC_EXAMPLE)), parse_metadata(RFC_EXAMPLE))

    def test_distinct_boundaries_compile_nothing(self) -> None:
        """
        Each message's own boundary costs no pattern compilation (it did:
        ~200 us per multipart message), and a boundary line cut by a chunk
        edge is still found.
        """
        import re

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("re.compile called while parsing")

        messages = [
            b"Subject: m\r\n" + multipart(b"mixed", b"B%d" % n, [leaf(b"text/plain", b"-- \r\n--B%dx" % n)])
            for n in range(300)
        ]
        expected = [parse_metadata(m) for m in messages[:3]]
        self.patch(re, "compile", refuse)
        for n, m in enumerate(messages):
            part, subtype = parse_metadata(m).body_structure[:2]
            self.assertEqual(
                (part[:2], part[6], subtype), (("TEXT", "PLAIN"), len(b"-- \r\n--B%dx" % n), "MIXED")
            )
        for chunk in (3, 7, 11):
            self.patch(mime, "_CHUNK", chunk)
            self.assertEqual([parse_metadata(io.BytesIO(m)) for m in messages[:3]], expected)

    def test_long_lines(self) -> None:
        """Lines longer than the line buffer are handled without losing octets."""
        body = b"x" * 200_000
        data = b"Subject: " + b"s" * 100_000 + b"\r\n\r\n" + body
        md = parse_metadata(io.BytesIO(data))
        self.assertEqual(md.header_size, 100_013)
        self.assertEqual(md.body_structure[6:8], (200_000, 1))


FRAGMENTS = [
    b"--b\r\n",
    b"--b--\r\n",
    b"--c\n",
    b"--c--",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/digest; boundary="c"\n',
    b"Content-Type: message/rfc822\r\n",
    b'Content-Type: text/plain; name*0*=x\'y\'%41; name*1="\\""\r\n',
    b"Content-Disposition: inline; (c\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"text\r\n",
    b" folded\r\n",
    b'From: "a\\" <b@c>, g: d@e, <@x:y@z>;, (c) <\r\n',
    b"To: ;;,,:<>@\r\n",
    b"\xff\x00--",
]


class FuzzTests(SynchronousTestCase):
    def check(self, data: bytes) -> None:
        """Check the invariants every input must keep."""
        md = parse_metadata(data)
        self.assertIsInstance(md, MessageMetadata)
        self.assertTrue(0 <= md.header_size <= len(data))
        for s in all_strings((md.headers, md.envelope, md.body_structure)):
            s.encode("latin-1")
        self.assertEqual(decode_metadata(encode_metadata(md)), md)
        size, fields = mime.parse_header_section(data)
        self.assertEqual((size, tuple(fields)), (md.header_size, tuple(md.headers)))
        self.assertEqual(extract_section(data, "HEADER"), data[: md.header_size])
        self.assertEqual(extract_section(data, "TEXT"), data[md.header_size :])
        for section in ("1", "1.MIME", "1.1.TEXT", "2.HEADER", "1.2.HEADER.FIELDS (To)", "1.1.1"):
            self.assertIsInstance(extract_section(data, section), bytes)
        self.assertIsInstance(header_fields(md, ["to"], exclude=True), bytes)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=3000))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Arbitrary octets always yield metadata and sections, never an exception."""
        self.check(data)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=20), max_size=40))
    def test_mime_like_bytes(self, pieces: list[bytes]) -> None:
        """MIME-like fragments in any order never raise, and file input matches bytes input."""
        data = b"".join(pieces)
        self.check(data)
        old = mime._CHUNK
        mime._CHUNK = 5
        try:
            self.assertEqual(parse_metadata(io.BytesIO(data)), parse_metadata(data))
        finally:
            mime._CHUNK = old


class FieldAddressesTests(SynchronousTestCase):
    def test_each_occurrence_in_the_header_only(self) -> None:
        """field_addresses gives one tuple per field occurrence, folded fields included, and stops at the body."""
        data = (
            b"From: A <a@x.example>, b@y.example\r\nTo: c@z.example\r\nfrom:\r\n d@w.example\r\n"
            b"\r\nFrom: body@not.example\r\n"
        )
        found = mime.field_addresses(data, "From")
        self.assertEqual(
            [[(a[2], a[3]) for a in field] for field in found],
            [[("a", "x.example"), ("b", "y.example")], [("d", "w.example")]],
        )
        self.assertEqual(mime.field_addresses(b"\r\nFrom: a@b.example\r\n", "from"), [])
        self.assertEqual(mime.field_addresses(b"To: a@b.example\r\n", "from"), [])


# ---------------------------------------------------------------------------
# Fast paths against the general code (differential tests)


def _reference_parse_fields(data: bytes) -> list[tuple[str, str]]:
    """The line-by-line header splitter that mime._parse_fields replaced."""
    import re

    name_re = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
    fields: list[tuple[str, str]] = []
    name: bytes | None = None
    value: list[bytes] = []
    pieces = data.split(b"\n")
    last = pieces.pop()
    lines = [p + b"\n" for p in pieces]
    if last:
        lines.append(last)
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                value.append(line)
            continue
        if name is not None:
            fields.append((name.decode("latin-1"), b"".join(value).decode("latin-1")))
            name = None
        m = name_re.match(line)
        if m is not None:
            colon = m.end() - 1
            name = line[:colon]
            value = [line[colon + 1 :]]
    if name is not None:
        fields.append((name.decode("latin-1"), b"".join(value).decode("latin-1")))
    return fields


def _reference_split_structured(value: str) -> list[str]:
    """mime._split_structured without its fast path (the general scanner)."""
    segments: list[str] = []
    cur: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == '"':
            j = i + 1
            while j < n and value[j] != '"':
                j += 2 if value[j] == "\\" else 1
            cur.append(value[i : j + 1])
            i = j + 1
        elif c == "(":
            depth, j = 1, i + 1
            while j < n and depth:
                if value[j] == "\\":
                    j += 1
                elif value[j] == "(":
                    depth += 1
                elif value[j] == ")":
                    depth -= 1
                j += 1
            cur.append(" ")
            i = j
        elif c == ";":
            segments.append("".join(cur))
            cur = []
            i += 1
        else:
            cur.append(c)
            i += 1
    segments.append("".join(cur))
    return segments


def _reference_unquote(value: str) -> str:
    value = value.strip(" \t\r\n")
    if not value.startswith('"'):
        return value
    out = []
    i = 1
    while i < len(value) and value[i] != '"':
        if value[i] == "\\" and i + 1 < len(value):
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


def _reference_unfold(value: str) -> str:
    return mime._FOLD_RE.sub("", value).strip(" \t\r\n")


#: Address field values: the forms the fast path takes and near misses it must leave alone.
ADDRESS_VALUES = [
    "a@b.example",
    "<a@b.example>",
    "Name <a@b.example>",
    "An  When20\t<an.when20@sender4.test>",
    "First Last <first.last@x.example>, other@y.example , <z@z.example>",
    "=?utf-8?q?J=C3=B6rg?= <j@x.example>",
    '"Quoted, Name" <q@x.example>',
    "J. Smith <j@x.example>",
    "a@b.example (Comment Name)",
    "Group: a@b.example, c@d.example;",
    "undisclosed-recipients:;",
    "a@b.example,,c@d.example",
    "a@b.example,",
    ",a@b.example",
    "< a@b.example >",
    "Name <a@b.example> junk",
    "Name<a@b.example>",
    "Name <@route.example:a@b.example>",
    "Name <a@[192.0.2.1]>",
    "Name <a..b@x.example>",
    "Name <.a@x.example>",
    "Name <a@x.example.>",
    "a@b@c.example",
    "localonly",
    "<localonly>",
    "Name <>",
    "Ünïcode <u@x.example>",
    "Name\r <a@b.example>",
    "Name <a@b.example>>",
    "Name <<a@b.example>",
    "a@b.example c@d.example",
    "\\escaped <a@b.example>",
    "x)y <a@b.example>",
    "x]y <a@b.example>",
    "a@b.example\tOther <c@d.example>",
]

#: Structured MIME field values (Content-Type and friends).
STRUCTURED_VALUES = [
    "text/plain; charset=utf-8",
    'multipart/mixed; boundary="=_b000005"',
    'application/pdf; name="doc5.pdf"',
    'attachment; filename="a;b.pdf"',
    'attachment; filename="a\\";b.pdf"',
    "text/plain; (comment; here) charset=us-ascii",
    'text/plain; charset="unterminated',
    'text/plain; a="x"; b="y;z"; c=d',
    'text/plain; a=""; b="\\\\"',
    "text/plain;;; charset=x;",
    'x; a="one""two"; b=three',
    "",
    ";",
    '"',
    '";"',
]


def _workload_messages() -> list[bytes]:
    """Messages shaped as the imap_sync benchmark's (its forms of every header field)."""
    import random

    rng = random.Random(2026)
    words = ["an", "when", "out", "so", "release", "budget", "o'neil", "x-y", "j=c3"]
    out = []
    for seq in range(200):
        sender = f"{rng.choice(words)}.{rng.choice(words)}{rng.randrange(100)}@sender{seq % 53}.test"
        name = sender.split("@")[0].replace(".", " ").title()
        cc = f"Cc: {rng.choice(words).title()} <{rng.choice(words)}@example.test>\r\n" if seq % 4 == 0 else ""
        head = (
            f"Return-Path: <{sender}>\r\nFrom: {name} <{sender}>\r\nTo: <user1@example.test>\r\n{cc}"
            f"Subject: s {seq}\r\nDate: Sun, 23 Nov 2025 12:13:48 +0000\r\n"
            f"Message-ID: <{seq:06d}@sender.test>\r\nMIME-Version: 1.0\r\n"
        ).encode()
        if seq % 5:
            out.append(head + b"Content-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n")
            continue
        b = f"=_b{seq:06d}"
        out.append(
            head
            + (
                f'Content-Type: multipart/mixed; boundary="{b}"\r\n\r\npreamble\r\n--{b}\r\n'
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\nhi\r\n"
                f'--{b}\r\nContent-Type: application/pdf; name="doc{seq}.pdf"\r\n'
                f'Content-Disposition: attachment; filename="doc{seq}.pdf"\r\n'
                f"Content-Transfer-Encoding: base64\r\n\r\nQUJD\r\n--{b}--\r\n"
            ).encode()
        )
    return out


def _corpus_headers() -> list[bytes]:
    """Header sections: the workload's, this module's sample messages, and folded variants."""
    sections = [m.split(b"\r\n\r\n", 1)[0] + b"\r\n" for m in _workload_messages()]
    for value in FRAGMENTS:
        sections.append(value)
    for value in ADDRESS_VALUES:
        for sep in (b" ", b"\r\n ", b"\n\t"):
            sections.append(b"From:" + sep + value.encode("latin-1") + b"\r\nTo: x\r\n")
    sections += [
        b"",
        b"\n",
        b"A: 1\nB : 2\r\n\tmore\r\n  more\nnot a field\n continued\nC:3",
        b" leading continuation\nX: y\n",
        b"X-\xff: \xfe\r\nY:\r\nZ",
        b"A:\r\n\r\nB: after blank\r\n",
        b"A: 1\r\r\nB: 2\r",
    ]
    return sections


class FastPathTests(SynchronousTestCase):
    """The fast paths give exactly what the general code gives."""

    def check_addresses(self, value: str) -> None:
        expected = mime._AddressParser(value).parse()
        self.assertEqual(mime._parse_addresses(value), expected, value)
        simple = mime._simple_addresses(value) if value else None
        if simple is not None:
            self.assertEqual(simple, expected, value)

    def test_address_values(self) -> None:
        """The simple-address fast path agrees with the full parser, or declines."""
        taken = 0
        for value in ADDRESS_VALUES:
            for v in (value, value.strip()):
                self.check_addresses(v)
                taken += mime._simple_addresses(v) is not None if v else 0
        self.assertGreater(taken, 5)

    @settings(max_examples=500, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    "a",
                    "Bc",
                    "x.y",
                    "=?q?=",
                    " ",
                    "  ",
                    "\t",
                    "<",
                    ">",
                    "@",
                    ",",
                    ";",
                    ":",
                    '"',
                    "(",
                    ")",
                    "[",
                    "]",
                    ".",
                    "\\",
                    "\xe9",
                    "\r",
                ]
            ),
            max_size=25,
        )
    )
    def test_generated_addresses(self, pieces: list[str]) -> None:
        """Generated address-like values: fast path and full parser agree."""
        self.check_addresses(mime._unfold("".join(pieces)))

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.sampled_from(["a", "/", "=", ";", '"', "\\", "(", ")", " ", "\t", "x-y"]), max_size=25)
    )
    def test_generated_structured(self, pieces: list[str]) -> None:
        """Generated structured values: the split and unquote fast paths agree with the scanners."""
        value = "".join(pieces)
        self.assertEqual(mime._split_structured(value), _reference_split_structured(value))
        self.assertEqual(mime._unquote(value), _reference_unquote(value))

    def test_structured_values(self) -> None:
        for value in STRUCTURED_VALUES:
            self.assertEqual(mime._split_structured(value), _reference_split_structured(value), value)
            for seg in _reference_split_structured(value):
                self.assertEqual(
                    mime._unquote(seg.partition("=")[2]), _reference_unquote(seg.partition("=")[2])
                )

    def test_header_sections(self) -> None:
        """Header splitting, unfolding and envelopes agree with the general code on the corpus."""
        for data in _corpus_headers():
            fields = mime._parse_fields(data)
            self.assertEqual(list(fields), _reference_parse_fields(data), data)
            for _, v in fields:
                self.assertEqual(mime._unfold(v), _reference_unfold(v))
                self.check_addresses(mime._unfold(v))

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.sampled_from([b"A: 1", b"b :2", b"\r\n", b"\n", b" ", b"\t", b"x", b":", b"\r", b"\xff"]),
            max_size=30,
        )
    )
    def test_generated_header_sections(self, pieces: list[bytes]) -> None:
        data = b"".join(pieces)
        self.assertEqual(list(mime._parse_fields(data)), _reference_parse_fields(data))

    def test_workload_messages(self) -> None:
        """Whole messages: the envelope equals the full parser's on every address field."""
        for data in _workload_messages():
            md = parse_metadata(data)
            fields = _reference_parse_fields(data.split(b"\r\n\r\n", 1)[0] + b"\r\n")
            by_name = {n.lower(): v for n, v in reversed(fields)}
            expected = [
                mime._AddressParser(_reference_unfold(by_name[k])).parse() if k in by_name else None
                for k in ("from", "to", "cc")
            ]
            self.assertEqual([md.envelope[2], md.envelope[5], md.envelope[6]], expected)
            self.assertIsNotNone(md.envelope[2])


def _tree(node: mime._Node) -> tuple[Any, ...]:
    """Everything the parse found of *node* and below it, comparable."""
    return (
        node.start,
        node.body_start,
        node.end,
        node.lines,
        tuple(node.fields),
        node.ctype,
        [_tree(c) for c in node.children],
        None if node.message is None else _tree(node.message),
    )


def _streamed(data: bytes) -> mime._Node:
    """The streaming parser's tree of *data*, read from a file object."""
    return mime._Parser(mime._Reader(io.BytesIO(data))).run()


def _hostile_messages() -> list[bytes]:
    """Inputs that take every turn of the scanner."""
    long_name = b"X-Long: " + b"y" * 300 + b"\r\n"
    out = [
        b"",
        b"\n",
        b"\r\n",
        b"\r",
        b"--",
        b"--b\r\n",
        b"Subject: no body",
        b"Subject: no blank line\r\nFrom: a@b\r\n",
        b"Subject: lf\n\nbody\nlines\n",
        b"Subject: cr\ronly\r\rbody\r",
        b"Subject: folded\r\n  more\r\n\tand more\r\nFrom: \r\n a@b\r\n\r\nx",
        b"\xff\xfe: \xe9\r\nSubject: \xe9t\xe9\r\n\r\n\xe9",
        long_name * 10 + b"\r\n" + long_name,
        RFC_EXAMPLE,
        RFC_EXAMPLE.replace(b"\r\n", b"\n"),
        RFC_EXAMPLE.replace(b"\r\n", b"\r"),
        RFC_EXAMPLE[: len(RFC_EXAMPLE) // 2],
        RFC_EXAMPLE.replace(b"--outer--", b"--outer-x"),
        RFC_EXAMPLE.replace(b"boundary=outer", b"boundary=missing"),
        RFC_EXAMPLE.replace(b"boundary=in3", b"charset=x"),
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b--\r\n--b\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nX: y\r\n--b \t\r\n\r\nz\r\n--b--  \r\nepilogue",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--bc\r\n--b\r\n\r\n--b-\r\n--b--x\r\n--b--",
        b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n"
        b"Content-Type: multipart/mixed; boundary=ab\r\n\r\n--ab\r\n\r\ninner\r\n--a\r\n\r\nouter\r\n--a--",
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: in digest\r\n\r\nx\r\n--d\r\n"
        b"Content-Type: text/plain\r\n\r\ny\r\n--d--\r\n",
        b"Content-Type: message/rfc822\r\n\r\n",
        b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n--b--\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Content-Type: multipart/alternative; boundary=c\r\n\r\n--c\r\n\r\nq\r\n--b\r\n\r\nr\r\n--b--\r\n",
    ]
    nested = b"deep\r\n"
    for k in range(60):  # deeper than MAX_DEPTH
        nested = multipart(b"mixed", b"n%d" % k, [nested])
    out.append(nested)
    out.append(b"Content-Type: multipart/mixed; boundary=m\r\n\r\n" + b"--m\r\n\r\np\r\n" * 50 + b"--m--\r\n")
    out += [data for data in _workload_messages()[:20]]
    return out


class BytesParserTests(SynchronousTestCase):
    """
    The parser of octets held whole (:class:`mime._BytesParser`) finds
    exactly what the streaming parser finds reading them from a file.
    """

    def check(self, data: bytes) -> None:
        expected = _tree(_streamed(data))
        self.assertEqual(_tree(mime._BytesParser(data).run()), expected, data[:200])
        for chunk in (1, 2, 3, 7):
            self.patch(mime, "_CHUNK", chunk)
            self.assertEqual(_tree(_streamed(data)), expected, (chunk, data[:200]))
            self.assertEqual(_tree(mime._parse(io.BytesIO(data))), expected, (chunk, data[:200]))
        self.patch(mime, "_CHUNK", 1 << 20)
        self.assertEqual(
            parse_metadata(data), mime._metadata(mime._Parser(mime._Reader(io.BytesIO(data))).run())
        )

    def test_hostile(self) -> None:
        """Bare LF and CR, folded fields, nested multiparts, RFC822 parts, missing boundaries..."""
        for data in _hostile_messages():
            self.check(data)

    def test_limits(self) -> None:
        """Long lines, a header beyond the collect limit, and the depth and part limits."""
        self.patch(mime, "_LINE", 16)
        self.patch(mime, "HEADER_COLLECT_LIMIT", 40)
        self.patch(mime, "MAX_DEPTH", 3)
        self.patch(mime, "MAX_PARTS", 5)
        for data in _hostile_messages():
            self.check(data)
            self.check(data.replace(b"\r\n", b"\n"))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=20), max_size=40))
    def test_generated(self, pieces: list[bytes]) -> None:
        """MIME-like fragments in any order."""
        self.check(b"".join(pieces))

    def test_files(self) -> None:
        """
        A message file is read whole when it holds at most a chunk (in one
        read or several), streamed when not, from its current position.
        """
        path = self.mktemp()
        for data in (RFC_EXAMPLE, b"Subject: x\r\n\r\n" + b"y\r\n" * 5000, b""):
            with open(path, "wb") as f:
                f.write(b"skip" + data)
            expected = parse_metadata(data)
            for small, chunk in ((3, 3), (16, 1 << 20), (16, 1000), (1 << 16, 1 << 20)):
                self.patch(mime, "_SMALL", small)
                self.patch(mime, "_CHUNK", chunk)
                with open(path, "rb") as f:
                    f.read(4)
                    self.assertEqual(parse_metadata(f), expected)
                with open(path, "rb", buffering=0) as raw:
                    raw.read(4)
                    self.assertEqual(parse_metadata(raw), expected)


MIME_VALUES = [
    ' multipart/mixed; boundary="=_b000123"\r\n',
    " text/plain; charset=utf-8; format=flowed;\r\n",
    ' application/pdf; name="doc 1.pdf"\r\n',
    'text/plain;charset=""',
    "Text/Plain",
    "text/plain; a=1; A=2; a=3",
    "text/plain; a*=x; b*0=1; b*1*=%41",
    'text/plain; name="a;b"; x="(c)"',
    'text/plain; name="a\\"b"',
    "text/plain; name = x",
    "text/plain; ;; name=x;",
    " text/plain;\r\n\tcharset=us-ascii\r\n",
    "text/pl\xe9in; charset=\xe9",
    "text /plain",
    "/plain",
    "text/",
    "",
    ' attachment; filename="x.pdf"\r\n',
    "inline",
    'inline; filename=x.pdf; size=12; creation-date="Mon, 1 Jan 2024 00:00:00 +0000"',
    "attachment; filename*=utf-8''%e9.pdf",
    "(comment) inline",
    ";",
]


MIME_PIECES = [
    *("text", "/", "Plain", ";", " ", "\t", "=", '"', "a", "A", "*", "0", "'", "%", "(", ")"),
    *("\\", "\r\n ", "\r", "\xe9", ",", "name", "charset", "utf-8", "x.pdf", "\x00"),
]


class MimeValueFastPathTests(SynchronousTestCase):
    """The Content-Type and Content-Disposition fast paths give what the general code gives."""

    def check(self, raw: str) -> bool:
        """Compare both values' parses; whether the fast path took *raw* as a Content-Type."""
        value = mime._unfold(raw)
        self.assertEqual(mime._content_type_value.__wrapped__(raw), mime._general_content_type(value), raw)
        self.assertEqual(mime._disposition_value.__wrapped__(raw), mime._general_disposition(value), raw)
        m = mime._SIMPLE_CONTENT_TYPE_RE.fullmatch(value)
        return m is not None and mime._simple_parameters(m.group(3)) is not None

    def test_values(self) -> None:
        taken = sum(self.check(v) for v in MIME_VALUES)
        self.assertGreater(taken, 5)

    @settings(max_examples=500, deadline=None)
    @given(
        st.lists(
            st.sampled_from(MIME_PIECES),
            max_size=30,
        )
    )
    def test_generated(self, pieces: list[str]) -> None:
        self.check("".join(pieces))
        self.check("text/plain" + "".join(pieces))
        self.check("inline; " + "".join(pieces))
