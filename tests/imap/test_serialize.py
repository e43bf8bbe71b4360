"""Tests for txmail.imap.serialize: known answers, and round trips through the parser."""

from __future__ import annotations

import datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_fragment import frame
from txmail import mime
from txmail.imap import serialize
from txmail.imap.fragment import CommandFragments
from txmail.imap.parser import parse_command
from txmail.imap.types import Command, Fetch, Login, Select, SequenceSet, Store


def parse_one(data: bytes) -> Command:
    """Frame (accepting literals) and parse one command."""
    events = [e for e in frame([data]) if isinstance(e, CommandFragments)]
    assert len(events) == 1, events
    return parse_command(events[0].fragments)


#: (text, astring output) known answers.
ASTRINGS = [
    ("abc", b"abc"),
    ("a]b", b"a]b"),
    ("", b'""'),
    ("NIL", b'"NIL"'),
    ("nil", b'"nil"'),
    ("a b", b'"a b"'),
    ('a"b\\', b'"a\\"b\\\\"'),
    ("a*", b'"a*"'),
    ("(x)", b'"(x)"'),
    ("a\r\nb", b"{4}\r\na\r\nb"),
    ("é", b"{2}\r\n\xc3\xa9"),
]


class StringTests(SynchronousTestCase):
    def test_astring_known_answers(self) -> None:
        """astring picks atom, quoted or literal as the table says."""
        for text, expected in ASTRINGS:
            self.assertEqual(serialize.astring(text), expected, text)

    def test_astring_parses_back(self) -> None:
        """Every astring in the table parses back to its text as a LOGIN argument."""
        for text, encoded in ASTRINGS:
            cmd = parse_one(b"t LOGIN " + encoded + b" " + encoded + b"\r\n")
            self.assertEqual(cmd.args, Login(text, text))

    @settings(max_examples=150, deadline=None)
    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
    def test_astring_round_trip(self, text: str) -> None:
        """Any text without NUL survives astring then the parser."""
        encoded = serialize.astring(text)
        self.assertEqual(parse_one(b"t LOGIN x " + encoded + b"\r\n").args, Login("x", text))

    def test_string_never_atom(self) -> None:
        """string quotes even atom-like text; long text becomes a literal."""
        self.assertEqual(serialize.string("abc"), b'"abc"')
        long = "x" * (serialize.MAX_QUOTED + 1)
        self.assertTrue(serialize.string(long).startswith(b"{%d}\r\n" % len(long)))

    @settings(max_examples=500)
    @given(
        st.one_of(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
            st.text(alphabet=' "\\\tabc\r\n\x7f\x01'),
            st.text(alphabet="ab", min_size=serialize.MAX_QUOTED - 2, max_size=serialize.MAX_QUOTED + 2),
        ),
        st.sampled_from(["utf-8", "latin-1"]),
    )
    def test_string_quoted_or_literal(self, text: str, encoding: str) -> None:
        """
        RFC 3501 section 9: a quoted string when the octets allow (at most
        MAX_QUOTED, no CR, LF, NUL or 8-bit; backslash and quote escaped),
        else a literal -- whichever path string() takes.
        """
        try:
            data = text.encode(encoding)
        except UnicodeEncodeError:
            return
        quotable = len(data) <= serialize.MAX_QUOTED and all(0 < b < 0x80 and b not in (10, 13) for b in data)
        if quotable:
            expected = b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        else:
            expected = b"{%d}\r\n" % len(data) + data
        self.assertEqual(serialize.string(text, encoding), expected)
        self.assertEqual(serialize.string(data), expected)

    def test_nstring_and_numbers(self) -> None:
        """None is NIL, numbers are decimal, negatives and bools are refused."""
        self.assertEqual(serialize.nstring(None), b"NIL")
        self.assertEqual(serialize.nstring("x"), b'"x"')
        self.assertEqual(serialize.number(4294967295), b"4294967295")
        self.assertRaises(ValueError, serialize.number, -1)
        self.assertRaises(TypeError, serialize.value, True)
        self.assertRaises(ValueError, serialize.atom, "a b")

    def test_nested_values(self) -> None:
        """value writes nested lists of strings, numbers and NIL."""
        self.assertEqual(serialize.value(("a", 1, None, ("b", ()))), b'("a" 1 NIL ("b" ()))')


class StructureTests(SynchronousTestCase):
    def test_mailbox_round_trip(self) -> None:
        """mailbox encodes to modified UTF-7 and parses back to the same name."""
        table = [
            ("INBOX", b"INBOX"),
            ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("a&b c", b'"a&-b c"'),
            ("Nil", b'"Nil"'),
        ]
        for name, encoded in table:
            self.assertEqual(serialize.mailbox(name), encoded)
            self.assertEqual(parse_one(b"t SELECT " + encoded + b"\r\n").args, Select(name))

    def test_sequence_set_round_trip(self) -> None:
        """Sequence sets serialise as written and parse back equal."""
        for text in [b"1", b"1:*", b"*", b"4:2,7,9:*", b"1,2,3"]:
            cmd = parse_one(b"t FETCH " + text + b" FLAGS\r\n")
            assert isinstance(cmd.args, Fetch)
            self.assertEqual(serialize.sequence_set(cmd.args.sequence_set), text)
        self.assertEqual(serialize.sequence_set(SequenceSet(((3, None), (5, 5)))), b"3:*,5")

    def test_flag_list_round_trip(self) -> None:
        """A flag list serialises and parses back as STORE flags."""
        flags = ("\\Seen", "\\Deleted", "$Forwarded")
        encoded = serialize.flag_list(flags)
        self.assertEqual(encoded, b"(\\Seen \\Deleted $Forwarded)")
        self.assertEqual(
            parse_one(b"t STORE 1 FLAGS " + encoded + b"\r\n").args,
            Store(SequenceSet(((1, 1),)), "", False, flags),
        )

    def test_date_time(self) -> None:
        """INTERNALDATE format: space-padded day, zone as +hhmm; naive means UTC."""
        tz = datetime.timezone(datetime.timedelta(hours=-7))
        self.assertEqual(
            serialize.date_time(datetime.datetime(1996, 7, 7, 2, 44, 25, tzinfo=tz)),
            b'" 7-Jul-1996 02:44:25 -0700"',
        )
        self.assertEqual(
            serialize.date_time(datetime.datetime(2020, 12, 31, 23, 0, 0)), b'"31-Dec-2020 23:00:00 +0000"'
        )

    def test_timestamp_date_time(self) -> None:
        """A POSIX timestamp in UTC, to the second (fractions dropped, before 1970 too), as date_time gives it."""
        for ts in (0.0, 1_700_000_000.75, 1_700_000_000.0, 86_399.999, -0.5, -86_400.25, 951_782_400):
            when = datetime.datetime.fromtimestamp(ts, datetime.UTC).replace(microsecond=0)
            self.assertEqual(serialize.timestamp_date_time(ts), serialize.date_time(when), ts)
        self.assertEqual(serialize.timestamp_date_time(951_782_400.5), b'"29-Feb-2000 00:00:00 +0000"')
        self.assertEqual(serialize.timestamp_date_time(-0.5), b'"31-Dec-1969 23:59:59 +0000"')

    def test_envelope_from_mime(self) -> None:
        """The envelope of RFC 3501's sample message serialises as in section 8, octets as latin-1."""
        from tests.imap.test_parser import RFC_MESSAGE

        meta = mime.parse_metadata(RFC_MESSAGE)
        self.assertEqual(
            serialize.envelope(meta.envelope),
            b'("Mon, 7 Feb 1994 21:52:25 -0800 (PST)" "afternoon meeting" '
            b'(("Fred Foobar" NIL "foobar" "Blurdybloop.COM")) (("Fred Foobar" NIL "foobar" "Blurdybloop.COM")) '
            b'(("Fred Foobar" NIL "foobar" "Blurdybloop.COM")) ((NIL NIL "mooch" "owatagu.siam.edu")) '
            b'NIL NIL NIL "<B27397-0100000@Blurdybloop.COM>")',
        )
        self.assertEqual(serialize.envelope((None, "\xe9") + (None,) * 8)[:15], b"(NIL {1}\r\n\xe9 NIL")

    def test_body_structure(self) -> None:
        """Multipart parts are written without spaces between them, also inside MESSAGE/RFC822."""
        message = (
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n--x\r\n"
            b"Content-Type: message/rfc822\r\n\r\nSubject: s\r\n"
            b"Content-Type: multipart/alternative; boundary=y\r\n\r\n"
            b"--y\r\n\r\na\r\n--y\r\n\r\nb\r\n--y--\r\n--x--\r\n"
        )
        text = b'"TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" %d 1 NIL NIL NIL NIL'
        env = b'(NIL "s" NIL NIL NIL NIL NIL NIL NIL NIL)'
        expected = (
            b"(("
            + text % 2
            + b')("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 88 '
            + env
            + b" (("
            + text % 1
            + b")("
            + text % 1
            + b') "ALTERNATIVE" ("BOUNDARY" "y") NIL NIL NIL) 10 '
            b'NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "x") NIL NIL NIL)'
        )
        self.assertEqual(serialize.body_structure(mime.parse_metadata(message).body_structure), expected)


def _reference_envelope(env: tuple[Any, ...]) -> bytes:
    """ENVELOPE written with the general :func:`serialize.value` (what the fast path must give)."""
    out = []
    for i, member in enumerate(env):
        if 2 <= i <= 7 and isinstance(member, tuple):
            out.append(b"(" + b"".join(serialize.value(a, "latin-1") for a in member) + b")")
        else:
            out.append(serialize.value(member, "latin-1"))
    return b"(" + b" ".join(out) + b")"


def _reference_body_structure(body: tuple[Any, ...]) -> bytes:
    """BODYSTRUCTURE written with the general :func:`serialize.value`."""
    if body and isinstance(body[0], tuple):
        count = 0
        while count < len(body) and isinstance(body[count], tuple):
            count += 1
        parts = b"".join(_reference_body_structure(p) for p in body[:count])
        return b"(" + parts + b"".join(b" " + serialize.value(x, "latin-1") for x in body[count:]) + b")"
    rfc822 = serialize.is_message_rfc822(body)
    members = []
    for i, x in enumerate(body):
        if rfc822 and i == 7 and isinstance(x, tuple):
            members.append(_reference_envelope(x))
        elif rfc822 and i == 8 and isinstance(x, tuple):
            members.append(_reference_body_structure(x))
        else:
            members.append(serialize.value(x, "latin-1"))
    return b"(" + b" ".join(members) + b")"


_LATIN1_TEXT = st.text(alphabet=st.characters(max_codepoint=255), max_size=60)
_STRUCTURES = st.recursive(
    st.none() | _LATIN1_TEXT | st.integers(0, 2**40),
    lambda children: st.lists(children, max_size=6).map(tuple),
    max_leaves=30,
)


class Latin1FastPathTests(SynchronousTestCase):
    """ENVELOPE and BODYSTRUCTURE remember short tokens; the octets are those of the general code."""

    @given(_STRUCTURES)
    @settings(max_examples=300, deadline=None)
    def test_same_as_value(self, item: Any) -> None:
        for _ in range(2):  # the second time from the remembered tokens
            self.assertEqual(serialize._latin1(item), serialize.value(item, "latin-1"))

    def test_messages(self) -> None:
        """The workload's messages (multipart, attachments, message/rfc822) and RFC 3501's sample."""
        from tests.imap.test_parser import RFC_MESSAGE
        from tests.test_mime import _workload_messages

        for data in [RFC_MESSAGE, *_workload_messages()]:
            md = mime.parse_metadata(data)
            for _ in range(2):
                self.assertEqual(serialize.envelope(md.envelope), _reference_envelope(md.envelope))
                self.assertEqual(
                    serialize.body_structure(md.body_structure), _reference_body_structure(md.body_structure)
                )

    def test_bounded(self) -> None:
        """At most ``_TOKENS_MAX`` tokens are remembered; long strings never."""
        for n in range(serialize._TOKENS_MAX + 100):
            serialize._latin1(f"token-{n}")
        serialize._latin1("x" * (serialize._TOKEN_LEN + 1))
        self.assertLessEqual(len(serialize._TOKENS), serialize._TOKENS_MAX)
        self.assertNotIn("x" * (serialize._TOKEN_LEN + 1), serialize._TOKENS)
        self.assertEqual(serialize._latin1("token-99999"), b'"token-99999"')


class ResponseLineTests(SynchronousTestCase):
    def test_lines(self) -> None:
        """Untagged, tagged and continuation lines end in CRLF; CR/LF in text cannot split them."""
        self.assertEqual(serialize.untagged(b"3", b"EXISTS"), b"* 3 EXISTS\r\n")
        self.assertEqual(serialize.tagged("a1", "OK", "done", "READ-WRITE"), b"a1 OK [READ-WRITE] done\r\n")
        self.assertEqual(serialize.tagged("a1", "BAD", "x\r\ny"), b"a1 BAD x  y\r\n")
        self.assertEqual(serialize.continuation(), b"+ \r\n")
        self.assertEqual(serialize.continuation("Ready"), b"+ Ready\r\n")


_WORDS = st.sampled_from(
    [
        *("TEXT", "PLAIN", "MESSAGE", "message", "RFC822", "rfc822", "MULTIPART", "MIXED", "7BIT", "utf-8"),
        *('a"b', "x\\y", "\xe9t\xe9", "\r\n", "", "NIL", "x" * 50, "y" * 1100, "ME\xdfAGE"),
    ]
)
_STR = _WORDS | _LATIN1_TEXT
_NSTR = st.none() | _STR
_ADDRESS = st.tuples(_NSTR, _NSTR, _NSTR, _NSTR)
_ADDRESS_LIST = st.none() | st.lists(_ADDRESS, max_size=3).map(tuple)
_PARAMS = st.none() | st.lists(_STR, max_size=4).map(tuple)


@st.composite
def _envelopes(draw: Any) -> tuple[Any, ...]:
    from_ = draw(_ADDRESS_LIST)
    lists = [draw(st.just(from_) | _ADDRESS_LIST) for _ in range(2)] + [draw(_ADDRESS_LIST) for _ in range(3)]
    return (draw(_NSTR), draw(_NSTR), from_, *lists, draw(_NSTR), draw(_NSTR))


_EXTENSION = st.tuples(
    _NSTR, st.none() | st.tuples(_STR, _PARAMS), st.none() | st.lists(_STR).map(tuple), _NSTR
)


def _leaf(draw: Any, body: Any) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["TEXT", "APPLICATION", "MESSAGE", "message", "other"]))
    typ = draw(_STR) if kind == "other" else kind
    sub = "RFC822" if kind in ("MESSAGE", "message") and draw(st.booleans()) else draw(_STR)
    head = (typ, sub, draw(_PARAMS), draw(_NSTR), draw(_NSTR), draw(_STR), draw(st.integers(0, 2**40)))
    if typ == "TEXT":
        head += (draw(st.integers(0, 9999)),)
    elif sub == "RFC822":
        head += (draw(_envelopes()), body, draw(st.integers(0, 9999)))
    return (*head, draw(_NSTR), *draw(_EXTENSION))


@st.composite
def _bodies(draw: Any, depth: int = 0) -> tuple[Any, ...]:
    inner = _bodies(depth + 1) if depth < 3 else st.just(mime.EMPTY_BODY_STRUCTURE)
    if draw(st.booleans()):
        return _leaf(draw, draw(inner))
    parts = tuple(draw(st.lists(inner, min_size=1, max_size=3)))
    return (*parts, draw(_STR), draw(_PARAMS), *draw(_EXTENSION)[1:])


class StructureFastPathTests(SynchronousTestCase):
    """ENVELOPE and BODYSTRUCTURE give the general code's octets on any shape of their tuples."""

    @given(_envelopes())
    @settings(max_examples=300, deadline=None)
    def test_envelopes(self, env: tuple[Any, ...]) -> None:
        for _ in range(2):  # the second time from the remembered renderings
            self.assertEqual(serialize.envelope(env), _reference_envelope(env))

    @given(_bodies())
    @settings(max_examples=300, deadline=None)
    def test_body_structures(self, body: tuple[Any, ...]) -> None:
        for _ in range(2):
            self.assertEqual(serialize.body_structure(body), _reference_body_structure(body))

    @given(_STRUCTURES)
    @settings(max_examples=200, deadline=None)
    def test_other_shapes(self, item: Any) -> None:
        """Tuples of other shapes (as a cache damaged or of another version could hold)."""
        if isinstance(item, tuple):
            self.assertEqual(serialize.body_structure(item), _reference_body_structure(item))
            self.assertEqual(serialize.envelope(item), _reference_envelope(item))

    def test_refused(self) -> None:
        """What has no IMAP form is refused as by the general code: a negative number, a bool."""
        for body, error in (
            (("TEXT", "PLAIN", None, None, None, "7BIT", -1, 0), ValueError),
            (("TEXT", "PLAIN", None, None, None, "7BIT", True, 0), TypeError),
        ):
            self.assertRaises(error, _reference_body_structure, body)
            self.assertRaises(error, serialize.body_structure, body)
