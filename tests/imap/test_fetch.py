"""
Tests for txmail.imap.fetch: what a FETCH needs loaded, and the exact
octets of the untagged FETCH response (RFC 3501 sections 6.4.5 and 7.4.2).

Fetch attributes come from the real parser (``t FETCH 1 (...)``), so the
tests also show that what a client writes is answered under the right name.
"""

from __future__ import annotations

import calendar
import datetime

from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_fragment import frame
from txmail import mime
from txmail.imap import fetch, serialize
from txmail.imap.fetch import (
    FetchNeeds,
    basic_body_structure,
    batch_chunks,
    fetch_chunks,
    fetch_needs,
    render_fetch,
)
from txmail.imap.fragment import CommandFragments
from txmail.imap.parser import parse_command
from txmail.imap.types import Fetch, FetchAttribute, Section
from txmail.model import MessageInfo


def items(text: str) -> tuple[FetchAttribute, ...]:
    """The attributes the parser makes of ``t FETCH 1 <text>``."""
    events = [
        e for e in frame([b"t FETCH 1 " + text.encode("utf-8") + b"\r\n"]) if isinstance(e, CommandFragments)
    ]
    assert len(events) == 1, events
    args = parse_command(events[0].fragments).args
    assert isinstance(args, Fetch), args
    return args.items


def epoch(*fields: int) -> float:
    """Seconds since the epoch of a UTC date and time."""
    return float(calendar.timegm(datetime.datetime(*fields, tzinfo=datetime.UTC).utctimetuple()))


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


#: A nested message: 1 TEXT/PLAIN (8-bit), 2 MULTIPART/ALTERNATIVE (2.1,
#: 2.2), 3 MESSAGE/RFC822 holding a MULTIPART/MIXED (3.1, 3.2).
NESTED = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.com>, carol@example.net\r\n"
    b"Subject: Test\r\n"
    b"Date: Wed, 17 Jul 1996 02:23:25 -0700\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"Content-Disposition: inline\r\n"
    b"Content-Language: fr\r\n"
    b"\r\n"
    b"caf\xc3\xa9\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"plain\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
    b"\r\n"
    b"<p>html</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Disposition: attachment; filename=fwd.eml\r\n"
    b"\r\n"
    b"From: Dave <dave@example.org>\r\n"
    b"To: erin@example.com, Frank <frank@example.com>\r\n"
    b"Subject: Inner\r\n"
    b'Content-Type: multipart/mixed; boundary="nested"\r\n'
    b"\r\n"
    b"--nested\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"nested text\r\n"
    b"--nested\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Location: http://example.org/x\r\n"
    b"\r\n"
    b"AAEC\r\n"
    b"--nested--\r\n"
    b"--outer--\r\n"
)
NESTED_MD = mime.parse_metadata(NESTED)
NESTED_HEADER, _, NESTED_TEXT = NESTED.partition(b"\r\n\r\n")
NESTED_HEADER += b"\r\n\r\n"

#: The same message's envelope, as RFC 3501 section 7.4.2 lays it out.
NESTED_ENVELOPE = (
    b'("Wed, 17 Jul 1996 02:23:25 -0700" "Test" (("Alice" NIL "alice" "example.org"))'
    b' (("Alice" NIL "alice" "example.org")) (("Alice" NIL "alice" "example.org"))'
    b' (("Bob" NIL "bob" "example.com")(NIL NIL "carol" "example.net")) NIL NIL NIL "<1@example.org>")'
)
INNER_ENVELOPE = (
    b'(NIL "Inner" (("Dave" NIL "dave" "example.org")) (("Dave" NIL "dave" "example.org"))'
    b' (("Dave" NIL "dave" "example.org")) ((NIL NIL "erin" "example.com")("Frank" NIL "frank" "example.com"))'
    b" NIL NIL NIL NIL)"
)

#: Its BODYSTRUCTURE, extension data included (RFC 3501 section 7.4.2).
NESTED_BODYSTRUCTURE = (
    b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "8BIT" 5 1 NIL ("INLINE" NIL) ("fr") NIL)'
    b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 5 1 NIL NIL NIL NIL)'
    b'("TEXT" "HTML" NIL NIL NIL "7BIT" 11 1 "Q2hlY2sgSW50ZWdyaXR5IQ==" NIL NIL NIL)'
    b' "ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL)'
    b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 342 ' + INNER_ENVELOPE + b" "
    b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 11 1 NIL NIL NIL NIL)'
    b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 4 NIL NIL NIL "http://example.org/x")'
    b' "MIXED" ("BOUNDARY" "nested") NIL NIL NIL)'
    b' 16 NIL ("ATTACHMENT" ("FILENAME" "fwd.eml")) NIL NIL)'
    b' "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)'
)

#: Its BODY: the same without extension data, at every depth.
NESTED_BODY = (
    b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "8BIT" 5 1)'
    b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 5 1)("TEXT" "HTML" NIL NIL NIL "7BIT" 11 1) "ALTERNATIVE")'
    b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 342 ' + INNER_ENVELOPE + b" "
    b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 11 1)("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 4) "MIXED")'
    b" 16)"
    b' "MIXED")'
)

#: A plain message in the shape of RFC 3501's examples.
SIMPLE = (
    b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
    b"From: Terry Gray <gray@cac.washington.edu>\r\n"
    b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
    b"To: imap@cac.washington.edu\r\n"
    b"\r\n"
    b"Hello\r\n"
    b"World\r\n"
)
SIMPLE_MD = mime.parse_metadata(SIMPLE)

INFO = MessageInfo(
    uid=4827313,
    flags=frozenset({"\\Seen"}),
    size=44827,
    internal_date=epoch(1996, 7, 17, 9, 44, 25),
    modseq=1,
)


def info(**changes: object) -> MessageInfo:
    """:data:`INFO` with some fields changed."""
    fields = {
        "uid": INFO.uid,
        "flags": INFO.flags,
        "size": INFO.size,
        "internal_date": INFO.internal_date,
        "modseq": 1,
    }
    fields.update(changes)
    return MessageInfo(**fields)  # type: ignore[arg-type]


class FetchNeedsTests(SynchronousTestCase):
    #: (FETCH items as a client writes them, metadata, message, sets_seen).
    TABLE = [
        ("FLAGS", False, False, False),
        ("UID", False, False, False),
        ("INTERNALDATE", False, False, False),
        ("RFC822.SIZE", False, False, False),
        ("FAST", False, False, False),
        ("ALL", True, False, False),
        ("FULL", True, False, False),
        ("ENVELOPE", True, False, False),
        ("BODY", True, False, False),
        ("BODYSTRUCTURE", True, False, False),
        ("BODY[]", False, True, True),
        ("BODY.PEEK[]", False, True, False),
        ("BODY[HEADER]", False, True, True),
        ("BODY.PEEK[HEADER]", False, True, False),
        ("BODY[TEXT]", False, True, True),
        ("BODY[HEADER.FIELDS (FROM)]", True, False, True),
        ("BODY.PEEK[HEADER.FIELDS (FROM TO)]", True, False, False),
        ("BODY.PEEK[HEADER.FIELDS.NOT (FROM)]", True, False, False),
        ("BODY.PEEK[1.HEADER.FIELDS (FROM)]", False, True, False),
        ("BODY[1]", False, True, True),
        ("BODY.PEEK[1.MIME]", False, True, False),
        ("BODY.PEEK[3.TEXT]", False, True, False),
        ("BODY[]<0.10>", False, True, True),
        ("BODY.PEEK[]<0.10>", False, True, False),
        ("RFC822", False, True, True),
        ("RFC822.HEADER", False, True, False),
        ("RFC822.TEXT", False, True, True),
        ("(ENVELOPE BODY.PEEK[1])", True, True, False),
        ("(FLAGS BODY.PEEK[HEADER.FIELDS (DATE)] BODY[2])", True, True, True),
    ]

    def test_table(self) -> None:
        """Every kind of fetch item asks for exactly the data it is answered from."""
        for text, metadata, message, seen in self.TABLE:
            self.assertEqual(fetch_needs(items(text)), FetchNeeds(metadata, message, seen), text)

    def test_empty(self) -> None:
        """No items need nothing."""
        self.assertEqual(fetch_needs(()), FetchNeeds(False, False, False))

    def test_needs_are_enough(self) -> None:
        """render_fetch answers every table entry with only what fetch_needs asked for."""
        for text, *_ in self.TABLE:
            wanted = items(text)
            needs = fetch_needs(wanted)
            out = render_fetch(
                1,
                wanted,
                INFO,
                metadata=NESTED_MD if needs.metadata else None,
                message=NESTED if needs.message else None,
            )
            self.assertTrue(out.startswith(b"* 1 FETCH ("), text)
            self.assertTrue(out.endswith(b")\r\n"), text)


class SimpleItemTests(SynchronousTestCase):
    def test_rfc3501_flags_size(self) -> None:
        """RFC 3501 section 7.4.2's example: ``* 23 FETCH (FLAGS (\\Seen) RFC822.SIZE 44827)``."""
        self.assertEqual(
            render_fetch(23, items("(FLAGS RFC822.SIZE)"), INFO),
            b"* 23 FETCH (FLAGS (\\Seen) RFC822.SIZE 44827)\r\n",
        )

    def test_uid(self) -> None:
        """UID is the message's UID."""
        self.assertEqual(render_fetch(2, items("UID"), INFO), b"* 2 FETCH (UID 4827313)\r\n")

    def test_flags_sorted(self) -> None:
        """FLAGS lists the flags sorted, as the session's unsolicited FETCH FLAGS does."""
        i = info(flags=frozenset({"$Junk", "\\Seen", "\\Answered", "Work"}))
        self.assertEqual(
            render_fetch(1, items("FLAGS"), i), b"* 1 FETCH (FLAGS ($Junk Work \\Answered \\Seen))\r\n"
        )

    def test_flags_empty(self) -> None:
        """A message without flags shows ``FLAGS ()``."""
        self.assertEqual(
            render_fetch(1, items("FLAGS"), info(flags=frozenset())), b"* 1 FETCH (FLAGS ())\r\n"
        )

    def test_recent(self) -> None:
        """recent=True adds \\Recent, which no store keeps, to FLAGS."""
        self.assertEqual(
            render_fetch(1, items("FLAGS"), info(flags=frozenset()), recent=True),
            b"* 1 FETCH (FLAGS (\\Recent))\r\n",
        )
        self.assertEqual(
            render_fetch(1, items("FLAGS"), INFO, recent=True), b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\n"
        )

    def test_recent_without_flags_item(self) -> None:
        """recent=True alone does not add a FLAGS item."""
        self.assertEqual(render_fetch(1, items("UID"), INFO, recent=True), b"* 1 FETCH (UID 4827313)\r\n")

    def test_internaldate(self) -> None:
        """INTERNALDATE is the arrival time in UTC as an RFC 3501 date-time."""
        self.assertEqual(
            render_fetch(1, items("INTERNALDATE"), INFO),
            b'* 1 FETCH (INTERNALDATE "17-Jul-1996 09:44:25 +0000")\r\n',
        )

    def test_internaldate_single_digit_day(self) -> None:
        """A day below 10 is space-padded (RFC 3501 section 9, date-day-fixed)."""
        i = info(internal_date=epoch(2000, 1, 1, 0, 0, 0) + 0.75)
        self.assertEqual(
            render_fetch(1, items("INTERNALDATE"), i),
            b'* 1 FETCH (INTERNALDATE " 1-Jan-2000 00:00:00 +0000")\r\n',
        )

    def test_envelope(self) -> None:
        """ENVELOPE is the cached envelope in RFC 3501's order."""
        self.assertEqual(
            render_fetch(1, items("ENVELOPE"), INFO, metadata=NESTED_MD),
            b"* 1 FETCH (ENVELOPE " + NESTED_ENVELOPE + b")\r\n",
        )

    def test_envelope_addresses_adjacent(self) -> None:
        """Addresses of one list follow each other without a space (RFC 3501 section 9, ``1*address``)."""
        env = (
            "d",
            "s",
            (("A", None, "a", "x"),),
            None,
            None,
            (("B", None, "b", "x"), (None, None, "c", "y")),
            None,
            None,
            None,
            None,
        )
        self.assertEqual(
            serialize.envelope(env),
            b'("d" "s" (("A" NIL "a" "x")) NIL NIL (("B" NIL "b" "x")(NIL NIL "c" "y")) NIL NIL NIL NIL)',
        )

    def test_envelope_group(self) -> None:
        """Group syntax (RFC 3501 section 7.4.2) keeps its marker addresses, adjacent too."""
        msg = b"To: friends: a@x, b@y;, c@z\r\n\r\n"
        env = serialize.envelope(mime.parse_metadata(msg).envelope)
        self.assertIn(
            b'((NIL NIL "friends" NIL)(NIL NIL "a" "x")(NIL NIL "b" "y")(NIL NIL NIL NIL)(NIL NIL "c" "z"))',
            env,
        )

    def test_envelope_eight_bit(self) -> None:
        """8-bit header octets go out unchanged as a literal."""
        env = serialize.envelope(mime.parse_metadata(b"Subject: caf\xe9\r\n\r\n").envelope)
        self.assertEqual(env, b"(NIL {4}\r\ncaf\xe9 NIL NIL NIL NIL NIL NIL NIL NIL)")

    def test_fast_macro(self) -> None:
        """FAST is FLAGS INTERNALDATE RFC822.SIZE, in that order."""
        self.assertEqual(
            render_fetch(7, items("FAST"), INFO),
            b'* 7 FETCH (FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 09:44:25 +0000" RFC822.SIZE 44827)\r\n',
        )

    def test_all_macro(self) -> None:
        """ALL adds ENVELOPE to FAST."""
        self.assertEqual(
            render_fetch(7, items("ALL"), INFO, metadata=NESTED_MD),
            b'* 7 FETCH (FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 09:44:25 +0000" RFC822.SIZE 44827 ENVELOPE '
            + NESTED_ENVELOPE
            + b")\r\n",
        )

    def test_order_as_asked(self) -> None:
        """Items come out in the order the client asked for them."""
        self.assertEqual(
            render_fetch(3, items("(RFC822.SIZE UID FLAGS)"), INFO),
            b"* 3 FETCH (RFC822.SIZE 44827 UID 4827313 FLAGS (\\Seen))\r\n",
        )

    def test_missing_metadata(self) -> None:
        """An item answered from metadata without metadata is a caller error."""
        for text in ("ENVELOPE", "BODY", "BODYSTRUCTURE"):
            self.assertRaises(ValueError, render_fetch, 1, items(text), INFO)

    def test_missing_message(self) -> None:
        """A body section without the message octets is a caller error."""
        for text in (
            "BODY[]",
            "BODY[1]",
            "RFC822",
            "RFC822.HEADER",
            "RFC822.TEXT",
            "BODY[1.HEADER.FIELDS (A)]",
        ):
            self.assertRaises(ValueError, render_fetch, 1, items(text), INFO, metadata=NESTED_MD)

    def test_unknown_attribute(self) -> None:
        """An attribute the parser never makes is refused."""
        self.assertRaises(ValueError, render_fetch, 1, [FetchAttribute("BINARY")], INFO)


class BodyStructureTests(SynchronousTestCase):
    def test_bodystructure(self) -> None:
        """BODYSTRUCTURE carries extension data at every level."""
        self.assertEqual(
            render_fetch(1, items("BODYSTRUCTURE"), INFO, metadata=NESTED_MD),
            b"* 1 FETCH (BODYSTRUCTURE " + NESTED_BODYSTRUCTURE + b")\r\n",
        )

    def test_body(self) -> None:
        """BODY drops extension data of every part, also inside MESSAGE/RFC822 (RFC 3501 section 7.4.2)."""
        self.assertEqual(
            render_fetch(1, items("BODY"), INFO, metadata=NESTED_MD),
            b"* 1 FETCH (BODY " + NESTED_BODY + b")\r\n",
        )

    def test_body_and_bodystructure(self) -> None:
        """Both forms may be asked together; each has its own shape."""
        self.assertEqual(
            render_fetch(1, items("(BODY BODYSTRUCTURE)"), INFO, metadata=NESTED_MD),
            b"* 1 FETCH (BODY " + NESTED_BODY + b" BODYSTRUCTURE " + NESTED_BODYSTRUCTURE + b")\r\n",
        )

    def test_body_single_part(self) -> None:
        """A single TEXT/PLAIN message's BODY is the shape of RFC 3501's FETCH FULL example."""
        self.assertEqual(
            render_fetch(12, items("BODY"), INFO, metadata=SIMPLE_MD),
            b'* 12 FETCH (BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 14 2))\r\n',
        )
        self.assertEqual(
            render_fetch(12, items("BODYSTRUCTURE"), INFO, metadata=SIMPLE_MD),
            b'* 12 FETCH (BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 14 2 NIL NIL NIL NIL))\r\n',
        )

    def test_full_macro(self) -> None:
        """FULL is ALL plus BODY (without extension data)."""
        self.assertEqual(
            render_fetch(12, items("FULL"), INFO, metadata=NESTED_MD),
            b'* 12 FETCH (FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 09:44:25 +0000" RFC822.SIZE 44827 ENVELOPE '
            + NESTED_ENVELOPE
            + b" BODY "
            + NESTED_BODY
            + b")\r\n",
        )

    def test_basic_body_structure_other_leaf(self) -> None:
        """A non-TEXT, non-MESSAGE leaf keeps its seven basic fields."""
        leaf = (
            "IMAGE",
            "PNG",
            ("NAME", "a.png"),
            "<id>",
            "desc",
            "BASE64",
            100,
            "md5",
            ("ATTACHMENT", None),
            ("en",),
            "loc",
        )
        self.assertEqual(basic_body_structure(leaf), leaf[:7])

    def test_basic_body_structure_message_global(self) -> None:
        """MESSAGE/GLOBAL has no envelope in mime's tuples, so it is cut like any leaf."""
        leaf = ("MESSAGE", "GLOBAL", None, None, None, "8BIT", 10, None, None, None, None)
        self.assertEqual(basic_body_structure(leaf), leaf[:7])

    def test_basic_body_structure_idempotent(self) -> None:
        """Cutting twice changes nothing more."""
        once = basic_body_structure(NESTED_MD.body_structure)
        self.assertEqual(basic_body_structure(once), once)
        self.assertEqual(serialize.body_structure(once), NESTED_BODY)


class SectionTests(SynchronousTestCase):
    def fetch_one(self, text: str, message: bytes = NESTED, **kw: object) -> bytes:
        return render_fetch(1, items(text), INFO, message=message, **kw)  # type: ignore[arg-type]

    def test_whole_message(self) -> None:
        """BODY[] is the whole message as a literal."""
        self.assertEqual(self.fetch_one("BODY[]"), b"* 1 FETCH (BODY[] " + literal(NESTED) + b")\r\n")

    def test_peek_answers_as_body(self) -> None:
        """BODY.PEEK[...] is answered as BODY[...] (RFC 3501 section 7.4.2 has no BODY.PEEK)."""
        self.assertEqual(self.fetch_one("BODY.PEEK[]"), self.fetch_one("BODY[]"))
        self.assertEqual(self.fetch_one("BODY.PEEK[2.1]"), b"* 1 FETCH (BODY[2.1] {5}\r\nplain)\r\n")

    def test_header_and_text(self) -> None:
        """BODY[HEADER] includes the blank line; BODY[TEXT] is everything after it."""
        self.assertEqual(
            self.fetch_one("BODY[HEADER]"), b"* 1 FETCH (BODY[HEADER] " + literal(NESTED_HEADER) + b")\r\n"
        )
        self.assertEqual(
            self.fetch_one("BODY[TEXT]"), b"* 1 FETCH (BODY[TEXT] " + literal(NESTED_TEXT) + b")\r\n"
        )

    def test_rfc822_items(self) -> None:
        """RFC822, RFC822.HEADER and RFC822.TEXT are BODY[], BODY[HEADER], BODY[TEXT] under their own names."""
        self.assertEqual(self.fetch_one("RFC822"), b"* 1 FETCH (RFC822 " + literal(NESTED) + b")\r\n")
        self.assertEqual(
            self.fetch_one("RFC822.HEADER"), b"* 1 FETCH (RFC822.HEADER " + literal(NESTED_HEADER) + b")\r\n"
        )
        self.assertEqual(
            self.fetch_one("RFC822.TEXT"), b"* 1 FETCH (RFC822.TEXT " + literal(NESTED_TEXT) + b")\r\n"
        )

    def test_rfc3501_header_fields_example(self) -> None:
        """RFC 3501 section 6.4.5's ``BODY[HEADER.FIELDS (DATE FROM)]``: the fields in message order, then the blank line."""
        expected = b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\nFrom: Terry Gray <gray@cac.washington.edu>\r\n\r\n"
        out = render_fetch(2, items("(FLAGS BODY[HEADER.FIELDS (DATE FROM)])"), INFO, metadata=SIMPLE_MD)
        self.assertEqual(
            out, b"* 2 FETCH (FLAGS (\\Seen) BODY[HEADER.FIELDS (DATE FROM)] " + literal(expected) + b")\r\n"
        )

    def test_header_fields_case_normalised(self) -> None:
        """The response names the fields as the parser normalised them (upper case)."""
        out = render_fetch(2, items("BODY.PEEK[header.fields (from To)]"), INFO, metadata=SIMPLE_MD)
        expected = b"From: Terry Gray <gray@cac.washington.edu>\r\nTo: imap@cac.washington.edu\r\n\r\n"
        self.assertEqual(out, b"* 2 FETCH (BODY[HEADER.FIELDS (FROM TO)] " + literal(expected) + b")\r\n")

    def test_header_fields_not(self) -> None:
        """HEADER.FIELDS.NOT leaves the named fields out."""
        out = render_fetch(2, items("BODY.PEEK[HEADER.FIELDS.NOT (DATE FROM TO)]"), INFO, metadata=SIMPLE_MD)
        expected = b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n\r\n"
        self.assertEqual(
            out, b"* 2 FETCH (BODY[HEADER.FIELDS.NOT (DATE FROM TO)] " + literal(expected) + b")\r\n"
        )

    def test_header_fields_from_metadata_or_message(self) -> None:
        """Top-level HEADER.FIELDS gives the same octets from metadata alone and from the message alone."""
        for text in ("BODY[HEADER.FIELDS (SUBJECT MESSAGE-ID X-NONE)]", "BODY[HEADER.FIELDS.NOT (SUBJECT)]"):
            wanted = items(text)
            from_md = render_fetch(1, wanted, INFO, metadata=NESTED_MD)
            self.assertEqual(render_fetch(1, wanted, INFO, message=NESTED), from_md, text)
            self.assertEqual(render_fetch(1, wanted, INFO, metadata=NESTED_MD, message=NESTED), from_md, text)

    def test_header_fields_none_match(self) -> None:
        """HEADER.FIELDS with no matching field is just the blank line."""
        self.assertEqual(
            render_fetch(1, items("BODY[HEADER.FIELDS (X-NONE)]"), INFO, metadata=NESTED_MD),
            b"* 1 FETCH (BODY[HEADER.FIELDS (X-NONE)] {2}\r\n\r\n)\r\n",
        )

    def test_header_field_name_quoted(self) -> None:
        """A header name that is not an atom is quoted in the response and still looked up."""
        out = render_fetch(1, items('BODY[1.HEADER.FIELDS ("A B" SUBJECT)]'), INFO, message=NESTED)
        self.assertEqual(out, b'* 1 FETCH (BODY[1.HEADER.FIELDS ("A B" SUBJECT)] "")\r\n')
        out = render_fetch(1, items('BODY[3.HEADER.FIELDS ("A B" SUBJECT)]'), INFO, message=NESTED)
        expected = b"Subject: Inner\r\n\r\n"
        self.assertEqual(
            out, b'* 1 FETCH (BODY[3.HEADER.FIELDS ("A B" SUBJECT)] ' + literal(expected) + b")\r\n"
        )

    #: (section, its octets) in the nested sample (RFC 3501 section 6.4.5's part numbering).
    PARTS = [
        ("1", b"caf\xc3\xa9"),
        ("1.1", b"caf\xc3\xa9"),
        (
            "1.MIME",
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            b"Content-Disposition: inline\r\nContent-Language: fr\r\n\r\n",
        ),
        ("2.1", b"plain"),
        ("2.2", b"<p>html</p>"),
        ("2.2.MIME", b"Content-Type: text/html\r\nContent-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n\r\n"),
        (
            "3.MIME",
            b"Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename=fwd.eml\r\n\r\n",
        ),
        (
            "3.HEADER",
            b"From: Dave <dave@example.org>\r\nTo: erin@example.com, Frank <frank@example.com>\r\n"
            b'Subject: Inner\r\nContent-Type: multipart/mixed; boundary="nested"\r\n\r\n',
        ),
        ("3.HEADER.FIELDS (FROM)", b"From: Dave <dave@example.org>\r\n\r\n"),
        ("3.HEADER.FIELDS.NOT (FROM TO CONTENT-TYPE)", b"Subject: Inner\r\n\r\n"),
        ("3.1", b"nested text"),
        ("3.2", b"AAEC"),
        (
            "3.2.MIME",
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Location: http://example.org/x\r\n\r\n",
        ),
    ]

    def test_parts(self) -> None:
        """Part sections of multiparts and of an encapsulated message give the part's octets."""
        for section, data in self.PARTS:
            self.assertEqual(
                self.fetch_one(f"BODY.PEEK[{section}]"),
                b"* 1 FETCH (BODY[" + section.encode() + b"] " + literal(data) + b")\r\n",
            )

    def test_message_rfc822_part(self) -> None:
        """Part 3 is the whole encapsulated message; 3.TEXT its body; 3.HEADER + 3.TEXT is 3 again."""
        whole = NESTED[NESTED.index(b"From: Dave") : NESTED.index(b"\r\n--outer--")]
        self.assertEqual(self.fetch_one("BODY[3]"), b"* 1 FETCH (BODY[3] " + literal(whole) + b")\r\n")
        header = dict(self.PARTS)["3.HEADER"]
        self.assertEqual(
            self.fetch_one("BODY[3.TEXT]"),
            b"* 1 FETCH (BODY[3.TEXT] " + literal(whole[len(header) :]) + b")\r\n",
        )

    def test_missing_sections_are_empty(self) -> None:
        """A section that does not exist or does not apply is the empty string, never NIL."""
        for section in ("4", "2.3", "3.3", "1.TEXT", "1.HEADER", "2.1.HEADER.FIELDS (FROM)", "9.9.9"):
            self.assertEqual(
                self.fetch_one(f"BODY[{section}]"),
                b"* 1 FETCH (BODY[" + section.encode() + b'] "")\r\n',
                section,
            )

    def test_eight_bit_literal(self) -> None:
        """8-bit octets go as a literal counted in octets, unchanged."""
        out = self.fetch_one("BODY[1]")
        self.assertEqual(out, b"* 1 FETCH (BODY[1] {5}\r\ncaf\xc3\xa9)\r\n")

    def test_short_seven_bit_is_still_literal(self) -> None:
        """Body data is a literal even when a quoted string could carry it."""
        self.assertEqual(self.fetch_one("BODY[3.2]"), b"* 1 FETCH (BODY[3.2] {4}\r\nAAEC)\r\n")

    def test_crlf_and_quotes_in_literal(self) -> None:
        """CR, LF, quotes and parentheses inside body data are carried verbatim by the literal."""
        msg = b'Subject: x\r\n\r\n"(a)"\r\n\\\r\n'
        self.assertEqual(
            self.fetch_one("BODY[TEXT]", message=msg), b'* 1 FETCH (BODY[TEXT] {10}\r\n"(a)"\r\n\\\r\n)\r\n'
        )

    def test_several_sections(self) -> None:
        """Several literals in one response each carry their own count."""
        out = self.fetch_one("(BODY.PEEK[2.1] UID BODY.PEEK[2.2])")
        self.assertEqual(
            out, b"* 1 FETCH (BODY[2.1] {5}\r\nplain UID 4827313 BODY[2.2] {11}\r\n<p>html</p>)\r\n"
        )

    def test_message_without_body(self) -> None:
        """A message with no blank line has all of it as header and an empty TEXT."""
        msg = b"Subject: only\r\n"
        self.assertEqual(
            self.fetch_one("BODY[HEADER]", message=msg), b"* 1 FETCH (BODY[HEADER] " + literal(msg) + b")\r\n"
        )
        self.assertEqual(self.fetch_one("BODY[TEXT]", message=msg), b'* 1 FETCH (BODY[TEXT] "")\r\n')

    def test_empty_message(self) -> None:
        """An empty message gives empty strings, not NIL."""
        self.assertEqual(
            self.fetch_one("(RFC822 BODY[])", message=b""), b'* 1 FETCH (RFC822 "" BODY[] "")\r\n'
        )


class PartialTests(SynchronousTestCase):
    def fetch_one(self, text: str) -> bytes:
        return render_fetch(1, items(text), INFO, message=NESTED)

    def test_partial(self) -> None:
        """A partial is [offset:offset+length]; the name shows only the origin (RFC 3501 section 7.4.2)."""
        self.assertEqual(self.fetch_one("BODY[]<0.4>"), b"* 1 FETCH (BODY[]<0> {4}\r\nFrom)\r\n")
        self.assertEqual(self.fetch_one("BODY.PEEK[]<6.5>"), b"* 1 FETCH (BODY[]<6> {5}\r\nAlice)\r\n")

    def test_partial_of_part(self) -> None:
        """A partial applies to the section's octets, not the message's; 8-bit is cut by octets."""
        self.assertEqual(self.fetch_one("BODY[1]<3.1>"), b"* 1 FETCH (BODY[1]<3> {1}\r\n\xc3)\r\n")
        self.assertEqual(
            self.fetch_one("BODY[2.2.MIME]<0.12>"), b"* 1 FETCH (BODY[2.2.MIME]<0> {12}\r\nContent-Type)\r\n"
        )

    def test_partial_longer_than_remaining(self) -> None:
        """A length reaching past the end gives what is left."""
        self.assertEqual(self.fetch_one("BODY[2.1]<2.100>"), b"* 1 FETCH (BODY[2.1]<2> {3}\r\nain)\r\n")

    def test_partial_at_end(self) -> None:
        """An origin exactly at the end gives the empty string."""
        self.assertEqual(self.fetch_one("BODY[2.1]<5.10>"), b'* 1 FETCH (BODY[2.1]<5> "")\r\n')

    def test_partial_past_end(self) -> None:
        """An origin beyond the end gives the empty string (RFC 3501 section 6.4.5)."""
        self.assertEqual(self.fetch_one("BODY[]<99999.10>"), b'* 1 FETCH (BODY[]<99999> "")\r\n')

    def test_partial_of_missing_section(self) -> None:
        """A partial of a section that does not exist is empty too."""
        self.assertEqual(self.fetch_one("BODY[7]<0.10>"), b'* 1 FETCH (BODY[7]<0> "")\r\n')

    def test_partial_header_fields(self) -> None:
        """A partial of HEADER.FIELDS from metadata cuts the formatted fields."""
        out = render_fetch(1, items("BODY.PEEK[HEADER.FIELDS (SUBJECT)]<9.4>"), INFO, metadata=NESTED_MD)
        self.assertEqual(out, b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)]<9> {4}\r\nTest)\r\n")

    def test_partials_differ(self) -> None:
        """Two partials of the same section are two items."""
        out = self.fetch_one("(BODY[]<0.4> BODY[]<6.5>)")
        self.assertEqual(out, b"* 1 FETCH (BODY[]<0> {4}\r\nFrom BODY[]<6> {5}\r\nAlice)\r\n")


class ImpliedItemTests(SynchronousTestCase):
    def test_rfc3501_uid_fetch(self) -> None:
        """UID FETCH always includes UID (RFC 3501 section 6.4.8's ``UID FETCH ... FLAGS`` example), first."""
        self.assertEqual(
            render_fetch(23, items("FLAGS"), INFO, include_uid=True),
            b"* 23 FETCH (UID 4827313 FLAGS (\\Seen))\r\n",
        )

    def test_uid_asked_and_implied(self) -> None:
        """A UID the client asked for is not repeated, and keeps its place."""
        self.assertEqual(
            render_fetch(23, items("(FLAGS UID)"), INFO, include_uid=True),
            b"* 23 FETCH (FLAGS (\\Seen) UID 4827313)\r\n",
        )

    def test_implicit_seen_adds_flags(self) -> None:
        """include_flags adds FLAGS last, with the flags as they are now (RFC 3501 section 6.4.5)."""
        self.assertEqual(
            render_fetch(1, items("BODY[2.1]"), INFO, message=NESTED, include_flags=True),
            b"* 1 FETCH (BODY[2.1] {5}\r\nplain FLAGS (\\Seen))\r\n",
        )

    def test_flags_asked_and_implied(self) -> None:
        """A FLAGS the client asked for is not repeated."""
        self.assertEqual(
            render_fetch(1, items("(FLAGS BODY[2.1])"), INFO, message=NESTED, include_flags=True),
            b"* 1 FETCH (FLAGS (\\Seen) BODY[2.1] {5}\r\nplain)\r\n",
        )

    def test_uid_and_flags_implied_with_recent(self) -> None:
        """Both implied items, with \\Recent, around the asked one."""
        self.assertEqual(
            render_fetch(4, items("RFC822.SIZE"), INFO, include_uid=True, include_flags=True, recent=True),
            b"* 4 FETCH (UID 4827313 RFC822.SIZE 44827 FLAGS (\\Seen \\Recent))\r\n",
        )

    def test_uid_fetch_with_macro(self) -> None:
        """UID FETCH n FAST gives UID first, then the macro's items."""
        self.assertEqual(
            render_fetch(5, items("FAST"), INFO, include_uid=True),
            b'* 5 FETCH (UID 4827313 FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 09:44:25 +0000" RFC822.SIZE 44827)\r\n',
        )

    def test_duplicates_sent_once(self) -> None:
        """An item asked twice (PEEK or not) is answered once."""
        self.assertEqual(
            render_fetch(1, items("(UID BODY[2.1] FLAGS UID BODY.PEEK[2.1] FLAGS)"), INFO, message=NESTED),
            b"* 1 FETCH (UID 4827313 BODY[2.1] {5}\r\nplain FLAGS (\\Seen))\r\n",
        )

    def test_section_does_not_count_as_body(self) -> None:
        """BODY[...] and the BODY structure are different items."""
        out = render_fetch(1, items("(BODY BODY[2.1])"), INFO, metadata=NESTED_MD, message=NESTED)
        self.assertEqual(out, b"* 1 FETCH (BODY " + NESTED_BODY + b" BODY[2.1] {5}\r\nplain)\r\n")

    def test_direct_attributes(self) -> None:
        """Hand-built attributes (as the session might make) work like parsed ones."""
        attrs = [FetchAttribute("BODY", Section((2, 2), "MIME"), (0, 12), peek=True)]
        self.assertEqual(
            render_fetch(1, attrs, INFO, message=NESTED),
            b"* 1 FETCH (BODY[2.2.MIME]<0> {12}\r\nContent-Type)\r\n",
        )


class FetchChunksTests(SynchronousTestCase):
    def test_literal_octets_are_not_copied(self) -> None:
        """The pieces join to render_fetch's bytes; BODY[]'s octets are the message object itself."""
        for text in (
            "(UID BODY.PEEK[] FLAGS)",
            "(RFC822 RFC822.SIZE)",
            "(BODY.PEEK[TEXT]<2.5> UID)",
            "(FLAGS)",
        ):
            wanted = items(text)
            chunks = fetch_chunks(3, wanted, INFO, metadata=SIMPLE_MD, message=SIMPLE, include_uid=True)
            self.assertEqual(
                b"".join(chunks),
                render_fetch(3, wanted, INFO, metadata=SIMPLE_MD, message=SIMPLE, include_uid=True),
                text,
            )
        big = SIMPLE + b"a line of the body\r\n" * 300  # above fetch._JOINED_LITERAL
        chunks = fetch_chunks(3, items("(UID BODY.PEEK[] FLAGS)"), INFO, message=big)
        self.assertEqual(len(chunks), 3)
        self.assertIs(chunks[1], big)
        self.assertTrue(chunks[0].endswith(b"BODY[] {%d}\r\n" % len(big)))
        self.assertTrue(chunks[2].startswith(b" FLAGS ("))

    def test_fused_format_same_octets(self) -> None:
        """
        Items all written directly (UID, RFC822.SIZE, FLAGS, one top-level
        header fields section) are answered by one format: the octets of
        the item-by-item path, ``%`` in a field name and \\Recent included.
        """
        texts = (
            "(UID RFC822.SIZE FLAGS)",
            "(FLAGS UID)",
            '(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From Subject "X-100%")])',
            "(BODY.PEEK[HEADER.FIELDS (Subject)] RFC822.SIZE)",
            "(FLAGS BODY.PEEK[HEADER.FIELDS.NOT (Subject)])",
        )
        lines = mime.header_lines(SIMPLE_MD.headers, ("from", "subject", "x-100%", "date"))
        fused = {
            (text, recent, n): fetch_chunks(
                3, items(text), INFO, metadata=md, include_uid=True, recent=recent
            )
            for text in texts
            for recent in (False, True)
            for n, md in enumerate((SIMPLE_MD, lines))
            if n == 0 or "NOT" not in text
        }
        self.assertTrue(all(len(chunks) == 1 for chunks in fused.values()))
        self.assertEqual(
            fused[texts[2], True, 0],
            [
                b"* 3 FETCH (UID 4827313 RFC822.SIZE 44827 FLAGS (\\Seen \\Recent) "
                b'BODY[HEADER.FIELDS (FROM SUBJECT "X-100%")] '
                + literal(mime.header_fields(SIMPLE_MD, ("From", "Subject", "X-100%")))
                + b")\r\n"
            ],
        )
        compiled = fetch._compiled
        self.patch(fetch, "_compiled", lambda *a: (compiled(*a)[0], None))  # item by item
        for (text, recent, n), chunks in fused.items():
            md = (SIMPLE_MD, lines)[n]
            self.assertEqual(
                chunks, fetch_chunks(3, items(text), INFO, metadata=md, include_uid=True, recent=recent), text
            )

    def test_structures_same_octets(self) -> None:
        """
        ENVELOPE, BODYSTRUCTURE and BODY given as kept Structures
        (txmail.imap.structures) are written as from the metadata, fused
        with UID, FLAGS, RFC822.SIZE and INTERNALDATE or item by item
        beside other items; a header fields section needs the metadata.
        """
        from txmail.imap.structures import structures_of

        for md in (SIMPLE_MD, NESTED_MD):
            kept = structures_of(md)
            for text in (
                "(ENVELOPE BODYSTRUCTURE INTERNALDATE FLAGS RFC822.SIZE)",
                "(BODY ENVELOPE)",
                "(BODYSTRUCTURE MODSEQ)",
                "(ENVELOPE BODY.PEEK[TEXT]<0.10>)",
            ):
                wanted = items(text)
                expected = render_fetch(3, wanted, INFO, metadata=md, message=SIMPLE, include_uid=True)
                got = fetch_chunks(3, wanted, INFO, metadata=kept, message=SIMPLE, include_uid=True)
                self.assertEqual(b"".join(got), expected, text)
                self.assertEqual(len(got), 1)
        with self.assertRaises(ValueError):
            fetch_chunks(3, items("(ENVELOPE BODY.PEEK[HEADER.FIELDS (Subject)])"), INFO, metadata=kept)
        with self.assertRaises(ValueError):
            fetch_chunks(3, items("(THREADID)"), INFO, metadata=kept)

    def test_flag_texts_remembered(self) -> None:
        """The flag texts are remembered by flag set, and the memory emptied when full."""
        self.patch(fetch, "_FLAGS_MEMO", 2)
        self.patch(fetch, "_FLAGS_SHOWN", {})
        wanted = items("(FLAGS)")
        for _ in range(2):
            for flags, shown in (
                ({"\\Seen"}, b"(\\Seen)"),
                ({"b", "a"}, b"(a b)"),
                (set(), b"()"),
                ({"\\Seen"}, b"(\\Seen)"),
            ):
                info = MessageInfo(uid=1, flags=frozenset(flags), size=1, internal_date=0.0, modseq=1)
                self.assertEqual(render_fetch(1, wanted, info), b"* 1 FETCH (FLAGS " + shown + b")\r\n")
                self.assertLessEqual(len(fetch._FLAGS_SHOWN), 2)

    def test_batch(self) -> None:
        """
        batch_chunks gives the octets of fetch_chunks of each row, the small
        responses joined into one piece, a big literal a piece of its own.
        """
        big = SIMPLE + b"a line of the body\r\n" * 300  # above fetch._JOINED_LITERAL
        other = MessageInfo(uid=9, flags=frozenset(), size=len(big), internal_date=0.0, modseq=2)
        for text, rows, count in (
            (
                "(UID FLAGS BODY.PEEK[])",
                [
                    (1, INFO, None, SIMPLE, False, False),
                    (2, other, None, big, True, True),
                    (3, INFO, None, SIMPLE, False, True),
                ],
                3,
            ),
            (
                "(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From Subject)])",
                [(1, INFO, SIMPLE_MD, None, False, False), (2, other, SIMPLE_MD, None, True, True)],
                1,
            ),
        ):
            wanted = items(text)
            pieces = batch_chunks(wanted, True, rows)
            expected = b"".join(
                b"".join(
                    fetch_chunks(
                        seq, wanted, info, metadata=md, message=m, include_uid=True, include_flags=f, recent=r
                    )
                )
                for seq, info, md, m, f, r in rows
            )
            self.assertEqual(b"".join(pieces), expected, text)
            self.assertEqual(len(pieces), count, text)
        self.assertIs(
            batch_chunks(items("(BODY.PEEK[])"), False, [(2, other, None, big, False, False)])[1], big
        )

    def test_small_literal_joined(self) -> None:
        """A literal of at most _JOINED_LITERAL octets is copied into one piece with its line."""
        chunks = fetch_chunks(3, items("(UID BODY.PEEK[] FLAGS)"), INFO, message=SIMPLE)
        self.assertEqual(len(chunks), 1)
        self.assertEqual(chunks[0], render_fetch(3, items("(UID BODY.PEEK[] FLAGS)"), INFO, message=SIMPLE))
