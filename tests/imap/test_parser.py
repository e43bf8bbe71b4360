"""Tests for txmail.imap.parser: RFC 3501 examples, every rule, limits and fuzzing."""

from __future__ import annotations

import contextlib
import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_fragment import frame, frame_all_ways
from txmail.imap import parser
from txmail.imap.fragment import CommandFragments, CommandFramer, LineFragment, LiteralFragment
from txmail.imap.parser import (
    MAX_DEPTH,
    Cursor,
    ParseError,
    decode_mailbox_name,
    encode_mailbox_name,
    parse_command,
)
from txmail.imap.types import (
    NO_ARGS,
    Append,
    Authenticate,
    Command,
    Copy,
    Create,
    Delete,
    Enable,
    Examine,
    Expunge,
    Fetch,
    FetchAttribute,
    Id,
    List,
    Login,
    Lsub,
    Move,
    Rename,
    Search,
    SearchAnd,
    SearchKey,
    SearchNot,
    SearchOr,
    Section,
    Select,
    SequenceSet,
    Status,
    Store,
    Subscribe,
    Unsubscribe,
)


def parse(test: SynchronousTestCase, data: bytes) -> Command:
    """Frame *data* (one command) in every split, check each parses the same, return it."""
    events = frame_all_ways(test, data)
    found = [e for e in events if isinstance(e, CommandFragments)]
    test.assertEqual(len(found), 1, events)
    return parse_command(found[0].fragments)


def parse_error(test: SynchronousTestCase, data: bytes) -> ParseError:
    """Frame and parse *data*; assert it is a ParseError and return it."""
    events = [e for e in frame([data]) if isinstance(e, CommandFragments)]
    test.assertEqual(len(events), 1)
    with test.assertRaises(ParseError) as cm:
        parse_command(events[0].fragments)
    return cm.exception


def seq(*ranges: tuple[int | None, int | None]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


F = FetchAttribute

RFC_MESSAGE = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
    b"From: Fred Foobar <foobar@Blurdybloop.COM>\r\n"
    b"Subject: afternoon meeting\r\n"
    b"To: mooch@owatagu.siam.edu\r\n"
    b"Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
    b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
)

#: RFC 3501 section 6 examples (client lines) and their parses.
RFC_EXAMPLES: list[tuple[bytes, Command]] = [
    (b"abcd CAPABILITY\r\n", Command("abcd", "CAPABILITY")),
    (b"a002 NOOP\r\n", Command("a002", "NOOP")),
    (b"A023 LOGOUT\r\n", Command("A023", "LOGOUT")),
    (b"a001 STARTTLS\r\n", Command("a001", "STARTTLS")),
    (b"A001 AUTHENTICATE GSSAPI\r\n", Command("A001", "AUTHENTICATE", Authenticate("GSSAPI"))),
    (b"a001 LOGIN SMITH SESAME\r\n", Command("a001", "LOGIN", Login("SMITH", "SESAME"))),
    (b"A142 SELECT INBOX\r\n", Command("A142", "SELECT", Select("INBOX"))),
    (b"A932 EXAMINE blurdybloop\r\n", Command("A932", "EXAMINE", Examine("blurdybloop"))),
    (b"A003 CREATE owatagusiam/\r\n", Command("A003", "CREATE", Create("owatagusiam/"))),
    (b"A683 DELETE blurdybloop\r\n", Command("A683", "DELETE", Delete("blurdybloop"))),
    (b"A683 RENAME blurdybloop sarasoop\r\n", Command("A683", "RENAME", Rename("blurdybloop", "sarasoop"))),
    (
        b"A002 SUBSCRIBE #news.comp.mail.mime\r\n",
        Command("A002", "SUBSCRIBE", Subscribe("#news.comp.mail.mime")),
    ),
    (
        b"A002 UNSUBSCRIBE #news.comp.mail.mime\r\n",
        Command("A002", "UNSUBSCRIBE", Unsubscribe("#news.comp.mail.mime")),
    ),
    (b'A682 LIST "" *\r\n', Command("A682", "LIST", List("", ("*",)))),
    (b'A101 LIST "" ""\r\n', Command("A101", "LIST", List("", ("",)))),
    (b'A102 LIST #news.comp.mail.misc ""\r\n', Command("A102", "LIST", List("#news.comp.mail.misc", ("",)))),
    (b'A103 LIST /usr/staff/jones ""\r\n', Command("A103", "LIST", List("/usr/staff/jones", ("",)))),
    (b"A202 LIST ~/Mail/ %\r\n", Command("A202", "LIST", List("~/Mail/", ("%",)))),
    (b'A002 LSUB "#news." "comp.mail.*"\r\n', Command("A002", "LSUB", Lsub("#news.", "comp.mail.*"))),
    (
        b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)\r\n",
        Command("A042", "STATUS", Status("blurdybloop", ("UIDNEXT", "MESSAGES"))),
    ),
    (
        b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(RFC_MESSAGE) + RFC_MESSAGE + b"\r\n",
        Command("A003", "APPEND", Append("saved-messages", ("\\Seen",), None, RFC_MESSAGE)),
    ),
    (b"FXXZ CHECK\r\n", Command("FXXZ", "CHECK")),
    (b"A341 CLOSE\r\n", Command("A341", "CLOSE")),
    (b"A202 EXPUNGE\r\n", Command("A202", "EXPUNGE", Expunge())),
    (
        b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"\r\n',
        Command(
            "A282",
            "SEARCH",
            Search(
                None,
                SearchAnd(
                    (
                        SearchKey("FLAGGED"),
                        SearchKey("SINCE", (datetime.date(1994, 2, 1),)),
                        SearchNot(SearchKey("FROM", ("Smith",))),
                    )
                ),
            ),
        ),
    ),
    (
        b'A283 SEARCH TEXT "string not in mailbox"\r\n',
        Command("A283", "SEARCH", Search(None, SearchKey("TEXT", ("string not in mailbox",)))),
    ),
    (
        b"A284 SEARCH CHARSET UTF-8 TEXT {6}\r\n\xd0\x9f\xd1\x80\xd0\xb8\r\n",
        Command("A284", "SEARCH", Search("UTF-8", SearchKey("TEXT", ("При",)))),
    ),
    (
        b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])\r\n",
        Command(
            "A654",
            "FETCH",
            Fetch(seq((2, 4)), (F("FLAGS"), F("BODY", Section((), "HEADER.FIELDS", ("DATE", "FROM"))))),
        ),
    ),
    (
        b"A003 STORE 2:4 +FLAGS (\\Deleted)\r\n",
        Command("A003", "STORE", Store(seq((2, 4)), "+", False, ("\\Deleted",))),
    ),
    (b"A003 COPY 2:4 MEETING\r\n", Command("A003", "COPY", Copy(seq((2, 4)), "MEETING"))),
    (
        b"A999 UID FETCH 4827313:4828442 FLAGS\r\n",
        Command("A999", "FETCH", Fetch(seq((4827313, 4828442)), (F("FLAGS"),), uid=True)),
    ),
    (
        b"A001 LOGIN {11}\r\nFRED FOOBAR {7}\r\nfat man\r\n",
        Command("A001", "LOGIN", Login("FRED FOOBAR", "fat man")),
    ),
]

_FULL = (F("FLAGS"), F("INTERNALDATE"), F("RFC822.SIZE"), F("ENVELOPE"), F("BODY"))

#: RFC 3501 section 8: the client lines of the sample session.
SAMPLE_SESSION: list[tuple[bytes, Command]] = [
    (b"a001 login mrc secret\r\n", Command("a001", "LOGIN", Login("mrc", "secret"))),
    (b"a002 select inbox\r\n", Command("a002", "SELECT", Select("INBOX"))),
    (b"a003 fetch 12 full\r\n", Command("a003", "FETCH", Fetch(seq((12, 12)), _FULL))),
    (
        b"a004 fetch 12 body[header]\r\n",
        Command("a004", "FETCH", Fetch(seq((12, 12)), (F("BODY", Section((), "HEADER")),))),
    ),
    (
        b"a005 store 12 +flags \\deleted\r\n",
        Command("a005", "STORE", Store(seq((12, 12)), "+", False, ("\\Deleted",))),
    ),
    (b"a006 logout\r\n", Command("a006", "LOGOUT")),
]


class RFCExampleTests(SynchronousTestCase):
    def test_section_6_examples(self) -> None:
        """Every RFC 3501 section 6 client example parses to the expected command, in every split."""
        for data, expected in RFC_EXAMPLES:
            self.assertEqual(parse(self, data), expected, data)

    def test_section_8_sample_session(self) -> None:
        """The client lines of the RFC 3501 section 8 sample session parse, fed as one stream."""
        stream = b"".join(data for data, _ in SAMPLE_SESSION)
        events = frame([stream])
        parsed = [parse_command(e.fragments) for e in events if isinstance(e, CommandFragments)]
        self.assertEqual(parsed, [cmd for _, cmd in SAMPLE_SESSION])


class CommandTests(SynchronousTestCase):
    def test_extension_commands(self) -> None:
        """IDLE, MOVE, UID MOVE, UID EXPUNGE, NAMESPACE, ID, UNSELECT and ENABLE parse."""
        table = [
            (b"a IDLE\r\n", Command("a", "IDLE")),
            (b"a NAMESPACE\r\n", Command("a", "NAMESPACE")),
            (b"a UNSELECT\r\n", Command("a", "UNSELECT")),
            (b"a MOVE 1:3 Trash\r\n", Command("a", "MOVE", Move(seq((1, 3)), "Trash"))),
            (b"a UID MOVE 7,9 Trash\r\n", Command("a", "MOVE", Move(seq((7, 7), (9, 9)), "Trash", uid=True))),
            (b"a UID EXPUNGE 3:*\r\n", Command("a", "EXPUNGE", Expunge(seq((3, None))))),
            (b"a ID NIL\r\n", Command("a", "ID", Id(None))),
            (
                b'a ID ("name" "sodr" "version" NIL)\r\n',
                Command("a", "ID", Id((("name", "sodr"), ("version", None)))),
            ),
            (b"a ID ()\r\n", Command("a", "ID", Id(()))),
            (
                b"a ENABLE UTF8=ACCEPT condstore\r\n",
                Command("a", "ENABLE", Enable(("UTF8=ACCEPT", "CONDSTORE"))),
            ),
            (b"a authenticate plain =\r\n", Command("a", "AUTHENTICATE", Authenticate("PLAIN", ""))),
            (
                b"a AUTHENTICATE PLAIN AGJvYgBwdw==\r\n",
                Command("a", "AUTHENTICATE", Authenticate("PLAIN", "AGJvYgBwdw==")),
            ),
            (b"a noop\r\n", Command("a", "NOOP", NO_ARGS)),
        ]
        for data, expected in table:
            self.assertEqual(parse(self, data), expected, data)

    def test_list_extended(self) -> None:
        """LIST-EXTENDED selection and return options, pattern lists and RETURN (STATUS ...) parse."""
        cmd = parse(
            self,
            b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "Sent/%") '
            b"RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN APPENDLIMIT))\r\n",
        )
        self.assertEqual(
            cmd.args,
            List(
                "",
                ("INBOX", "Sent/%"),
                ("SUBSCRIBED", "RECURSIVEMATCH"),
                ("CHILDREN", "SPECIAL-USE", "STATUS"),
                ("MESSAGES", "UNSEEN", "APPENDLIMIT"),
            ),
        )
        self.assertEqual(parse(self, b'a LIST "" % RETURN ()\r\n').args, List("", ("%",)))

    def test_status_items(self) -> None:
        """STATUS accepts every RFC 3501 item and APPENDLIMIT, and refuses unknown ones."""
        cmd = parse(self, b"a STATUS inbox (messages recent uidnext uidvalidity unseen appendlimit)\r\n")
        self.assertEqual(
            cmd.args,
            Status("INBOX", ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "APPENDLIMIT")),
        )
        parse_error(self, b"a STATUS inbox (FOO)\r\n")
        parse_error(self, b"a STATUS inbox ()\r\n")

    def test_append_forms(self) -> None:
        """APPEND with flags and date-time, with neither, and with a literal8 parse."""
        cmd = parse(self, b'a APPEND Drafts (\\Draft $Label) " 7-Feb-1994 21:52:25 -0800" {2+}\r\nhi\r\n')
        when = datetime.datetime(
            1994, 2, 7, 21, 52, 25, tzinfo=datetime.timezone(datetime.timedelta(hours=-8))
        )
        self.assertEqual(cmd.args, Append("Drafts", ("\\Draft", "$Label"), when, b"hi"))
        self.assertEqual(parse(self, b"a APPEND x {0}\r\n\r\n").args, Append("x", (), None, b""))
        self.assertEqual(
            parse(self, b"a APPEND x ~{1}\r\n\x00\r\n").args, Append("x", (), None, b"\x00", True)
        )
        parse_error(self, b"a APPEND x hello\r\n")
        parse_error(self, b'a APPEND x "32-Feb-1994 21:52:25 -0800" {1+}\r\nx\r\n')

    def test_nul_only_in_literal8(self) -> None:
        """
        RFC 3501 section 4.3 and RFC 9051 section 4.3: a literal is CHAR8,
        which excludes NUL; only a literal8 (RFC 3516) may carry one.  APPEND
        with a synchronizing or a LITERAL+ literal holding a NUL is BAD, and
        so is a NUL in a literal read as a string (a LOGIN password, a
        SEARCH string).
        """
        for marker in (b"{3}", b"{3+}"):
            parse_error(self, b"a APPEND x " + marker + b"\r\na\x00b\r\n")
        self.assertEqual(
            parse(self, b"a APPEND x ~{3}\r\na\x00b\r\n").args, Append("x", (), None, b"a\x00b", True)
        )
        parse_error(self, b"a LOGIN alice {3}\r\na\x00b\r\n")
        parse_error(self, b"a SEARCH SUBJECT {3+}\r\na\x00b\r\n")
        # The same octets without the NUL parse.
        self.assertEqual(parse(self, b"a APPEND x {3+}\r\na-b\r\n").args, Append("x", (), None, b"a-b"))

    def test_store_forms(self) -> None:
        """STORE FLAGS, -FLAGS.SILENT and flags without parentheses parse; \\Recent is refused."""
        self.assertEqual(
            parse(self, b"a UID STORE 1:* -FLAGS.SILENT (\\Seen \\Flagged)\r\n").args,
            Store(seq((1, None)), "-", True, ("\\Seen", "\\Flagged"), uid=True),
        )
        self.assertEqual(
            parse(self, b"a STORE 1 FLAGS \\Seen foo\r\n").args,
            Store(seq((1, 1)), "", False, ("\\Seen", "foo")),
        )
        self.assertEqual(parse(self, b"a STORE 1 FLAGS ()\r\n").args, Store(seq((1, 1)), "", False, ()))
        parse_error(self, b"a STORE 1 FLAGS (\\Recent)\r\n")
        parse_error(self, b"a STORE 1 LABELS (x)\r\n")

    def test_mailbox_names(self) -> None:
        """INBOX is case-insensitive, and names are decoded from modified UTF-7."""
        self.assertEqual(parse(self, b'a SELECT "iNbOx"\r\n').args, Select("INBOX"))
        self.assertEqual(parse(self, b"a SELECT INBOX.Sent\r\n").args, Select("INBOX.Sent"))
        self.assertEqual(
            parse(self, b"a CREATE ~peter/mail/&U,BTFw-/&ZeVnLIqe-\r\n").args,
            Create("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"),
        )
        self.assertEqual(parse(self, b"a CREATE a&-b\r\n").args, Create("a&b"))
        self.assertFalse(parse(self, b"a CREATE a&-b\r\n").invalid_name)

    def test_mailbox_name_not_modified_utf7(self) -> None:
        """
        RFC 3501 sections 5.1.3 and 9: a mailbox name is an astring, so one
        that is not valid modified UTF-7 is no syntax error; the command is
        marked ``invalid_name`` (answered NO) with the name undecoded.
        """
        for data, args in [
            (b"a CREATE a&b\r\n", Create("a&b")),
            (b"a SELECT &Jjo\r\n", Select("&Jjo")),
            (b'a STATUS "&AGE-" (MESSAGES)\r\n', Status("&AGE-", ("MESSAGES",))),
        ]:
            cmd = parse(self, data)
            self.assertEqual(cmd.args, args, data)
            self.assertTrue(cmd.invalid_name, data)
        # LIST: a pattern that is not modified UTF-7 is dropped; the command
        # is marked only when no pattern is left or the reference is bad.
        cmd = parse(self, b'a LIST "" ("&Jjo" "INBOX")\r\n')
        self.assertEqual((cmd.args, cmd.invalid_name), (List("", ("INBOX",)), False))
        cmd = parse(self, b'a LIST "" "&Jjo"\r\n')
        self.assertEqual((cmd.args, cmd.invalid_name), (List("", ()), True))
        cmd = parse(self, b'a LIST "&Jjo" "*"\r\n')
        self.assertEqual((cmd.args, cmd.invalid_name), (List("&Jjo", ()), True))
        self.assertTrue(parse(self, b'a LSUB "" "a&b"\r\n').invalid_name)
        # Still a syntax error when it is not an astring at all.
        parse_error(self, b'a SELECT "a\r\n')

    def test_errors(self) -> None:
        """Malformed commands give a ParseError carrying the tag."""
        for data in [
            b"a\r\n",
            b"a FOO\r\n",
            b"a NOOP extra\r\n",
            b"a UID NOOP\r\n",
            b"a SELECT\r\n",
            b'a SELECT "unterminated\r\n',
            b"a FETCH 0 FLAGS\r\n",
            b"a FETCH 1 (FLAGS\r\n",
            b"a FETCH 1 BODY[5.FOO]\r\n",
            b"a FETCH 1 BODY[MIME]\r\n",
            b"a FETCH 1 BODY[]<5.0>\r\n",
            b"a FETCH 1 FOO\r\n",
            b"a FETCH 99999999999 FLAGS\r\n",
            b"a SEARCH\r\n",
            b"a SEARCH FOO\r\n",
            b"a SEARCH SINCE 31-Feb-2020\r\n",
            b"a LOGIN a\r\n",
            b'a LOGIN a "b\\x"\r\n',
            b"a ENABLE\r\n",
            b"a SEARCH RETURN (BOGUS) ALL\r\n",
        ]:
            self.assertEqual(parse_error(self, data).tag, "a", data)

    def test_error_without_tag(self) -> None:
        """A line without a tag, or with one over MAX_TAG, gives a ParseError whose tag is None."""
        self.assertIsNone(parse_error(self, b"\r\n").tag)
        self.assertIsNone(parse_error(self, b"+ NOOP\r\n").tag)
        self.assertIsNone(parse_error(self, b"x" * 65 + b" NOOP\r\n").tag)
        self.assertEqual(parse(self, b"x" * 64 + b" NOOP\r\n").tag, "x" * 64)

    def test_password_not_in_repr(self) -> None:
        """The LOGIN password does not appear in the command's repr."""
        self.assertNotIn("sesame", repr(parse(self, b"a LOGIN u sesame\r\n")))

    def test_non_utf8_string_refused(self) -> None:
        """A string that is not UTF-8 is a ParseError, not a UnicodeDecodeError."""
        parse_error(self, b'a LOGIN "\xff" x\r\n')
        parse_error(self, b"a LOGIN {1+}\r\n\xff x\r\n")


class FetchTests(SynchronousTestCase):
    def fetch(self, items: bytes) -> tuple[FetchAttribute, ...]:
        args = parse(self, b"t FETCH 1 " + items + b"\r\n").args
        assert isinstance(args, Fetch)
        return args.items

    def test_macros(self) -> None:
        """ALL, FAST and FULL expand as RFC 3501 section 6.4.5 says."""
        self.assertEqual(self.fetch(b"ALL"), (F("FLAGS"), F("INTERNALDATE"), F("RFC822.SIZE"), F("ENVELOPE")))
        self.assertEqual(self.fetch(b"fast"), (F("FLAGS"), F("INTERNALDATE"), F("RFC822.SIZE")))
        self.assertEqual(self.fetch(b"FULL"), _FULL)

    def test_simple_attributes(self) -> None:
        """Every non-section fetch-att parses to its upper-cased name."""
        names = (
            "ENVELOPE FLAGS INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT BODY BODYSTRUCTURE UID"
        )
        self.assertEqual(self.fetch(b"(" + names.lower().encode() + b")"), tuple(F(n) for n in names.split()))

    def test_sections(self) -> None:
        """BODY[section]<partial> and BODY.PEEK parse for every section-spec form."""
        table = [
            (b"BODY[]", F("BODY", Section())),
            (b"BODY.PEEK[]<0.1024>", F("BODY", Section(), (0, 1024), True)),
            (b"BODY[TEXT]", F("BODY", Section((), "TEXT"))),
            (b"BODY[1]", F("BODY", Section((1,)))),
            (b"BODY[1.2.3]", F("BODY", Section((1, 2, 3)))),
            (b"BODY[2.MIME]", F("BODY", Section((2,), "MIME"))),
            (b"BODY[3.HEADER]", F("BODY", Section((3,), "HEADER"))),
            (b"body.peek[4.TEXT]<10.5>", F("BODY", Section((4,), "TEXT"), (10, 5), True)),
            (
                b'BODY[HEADER.FIELDS.NOT ("Subject" x-spam)]',
                F("BODY", Section((), "HEADER.FIELDS.NOT", ("SUBJECT", "X-SPAM"))),
            ),
        ]
        for data, expected in table:
            self.assertEqual(self.fetch(data), (expected,), data)


class SearchTests(SynchronousTestCase):
    def search(self, keys: bytes) -> Search:
        args = parse(self, b"t SEARCH " + keys + b"\r\n").args
        assert isinstance(args, Search)
        return args

    def test_every_key(self) -> None:
        """Every search key of RFC 3501 section 6.4.4 parses with its arguments."""
        d = datetime.date(1994, 2, 1)
        table: list[tuple[bytes, object]] = [
            (b"2:4,7", SearchKey("SEQUENCE", (seq((2, 4), (7, 7)),))),
            (b"*", SearchKey("SEQUENCE", (seq((None, None)),))),
            (b"UID 1:*", SearchKey("UID", (seq((1, None)),))),
            (b"HEADER X-Foo bar", SearchKey("HEADER", ("X-Foo", "bar"))),
            (b"LARGER 100", SearchKey("LARGER", (100,))),
            (b"SMALLER 5", SearchKey("SMALLER", (5,))),
            (b"KEYWORD $Junk", SearchKey("KEYWORD", ("$Junk",))),
            (b"UNKEYWORD foo", SearchKey("UNKEYWORD", ("foo",))),
            (b'BEFORE "1-Feb-1994"', SearchKey("BEFORE", (d,))),
        ]
        for name in [
            "ALL",
            "ANSWERED",
            "DELETED",
            "DRAFT",
            "FLAGGED",
            "NEW",
            "OLD",
            "RECENT",
            "SEEN",
            "UNANSWERED",
            "UNDELETED",
            "UNDRAFT",
            "UNFLAGGED",
            "UNSEEN",
        ]:
            table.append((name.lower().encode(), SearchKey(name)))
        for name in ["BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"]:
            table.append((name.encode() + b' "x y"', SearchKey(name, ("x y",))))
        for name in ["BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"]:
            table.append((name.encode() + b" 01-Feb-1994", SearchKey(name, (d,))))
        for data, expected in table:
            self.assertEqual(self.search(data).key, expected, data)

    def test_nesting(self) -> None:
        """OR, NOT and parentheses nest into a tree; several top-level keys are an AND."""
        result = self.search(b"OR (SEEN FLAGGED) NOT (OR 1 UID 2)  ".strip())
        self.assertEqual(
            result.key,
            SearchOr(
                SearchAnd((SearchKey("SEEN"), SearchKey("FLAGGED"))),
                SearchNot(SearchOr(SearchKey("SEQUENCE", (seq((1, 1)),)), SearchKey("UID", (seq((2, 2)),)))),
            ),
        )

    def test_return_options(self) -> None:
        """ESEARCH RETURN options (RFC 4731) and UID SEARCH parse."""
        args = parse(self, b"t UID SEARCH RETURN (MIN COUNT) CHARSET us-ascii DELETED\r\n").args
        self.assertEqual(args, Search("US-ASCII", SearchKey("DELETED"), True, ("MIN", "COUNT")))
        self.assertEqual(self.search(b"RETURN () ALL").return_options, ())

    def test_depth_limit(self) -> None:
        """Nesting deeper than MAX_DEPTH is a ParseError, and just below it parses."""
        ok = b"(" * (MAX_DEPTH - 1) + b"ALL" + b")" * (MAX_DEPTH - 1)
        self.search(ok)
        parse_error(self, b"t SEARCH " + b"(" * 1000 + b"ALL" + b")" * 1000 + b"\r\n")
        parse_error(self, b"t SEARCH " + b"NOT " * 1000 + b"ALL\r\n")


class RuleTests(SynchronousTestCase):
    def test_sequence_set(self) -> None:
        """sequence_set keeps ranges as written and expands/contains against the largest number."""
        s = parser.sequence_set(Cursor.of(b"4:2,7,9:*"))
        self.assertEqual(s, seq((4, 2), (7, 7), (9, None)))
        self.assertEqual(s.expand(10), [2, 3, 4, 7, 9, 10])
        self.assertEqual(s.expand(3), [2, 3])
        self.assertTrue(s.contains(3, 10))
        self.assertTrue(s.contains(10, 10))
        self.assertFalse(s.contains(5, 10))
        self.assertEqual(str(s), "4:2,7,9:*")
        self.assertEqual(parser.sequence_set(Cursor.of(b"*:5")).expand(3), [3])

    def test_date_time(self) -> None:
        """date_time reads a zone offset; a bad zone or time is a ParseError."""
        value = parser.date_time(Cursor.of(b'"17-Jul-1996 02:44:25 -0700"'))
        self.assertEqual(value.utcoffset(), datetime.timedelta(hours=-7))
        for bad in [
            b'"17-Jul-1996 02:44:25 +9900"',
            b'"17-Jul-1996 25:44:25 +0000"',
            b'"17-Foo-1996 02:44:25 +0000"',
        ]:
            self.assertRaises(ParseError, parser.date_time, Cursor.of(bad))

    def test_astring_forms(self) -> None:
        """astring reads atoms with ']', quoted strings with escapes and literals."""
        self.assertEqual(parser.astring(Cursor.of(b"a]b")), "a]b")
        self.assertEqual(parser.astring(Cursor.of(b'"a\\"b\\\\"')), 'a"b\\')
        c = Cursor([LineFragment(b""), LiteralFragment(b"x y"), LineFragment(b"")])
        self.assertEqual(parser.astring(c), "x y")
        self.assertTrue(c.at_end())


class MailboxNameTests(SynchronousTestCase):
    def test_rfc_example(self) -> None:
        """The RFC 3501 section 5.1.3 example decodes and encodes back to the same text."""
        encoded = "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        decoded = "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"
        self.assertEqual(decode_mailbox_name(encoded), decoded)
        self.assertEqual(encode_mailbox_name(decoded), encoded)

    def test_known_answers(self) -> None:
        """Ampersand, astral characters and plain ASCII round-trip."""
        table = [
            ("a&b", "a&-b"),
            ("Entwürfe", "Entw&APw-rfe"),
            ("\U0001f600", "&2D3eAA-"),
            ("plain", "plain"),
        ]
        for decoded, encoded in table:
            self.assertEqual(encode_mailbox_name(decoded), encoded)
            self.assertEqual(decode_mailbox_name(encoded), decoded)

    def test_invalid(self) -> None:
        """Unterminated shifts, bad base64, encoded ASCII and 8-bit text are refused."""
        for bad in ["&", "&U,BTFw", "&AGE-", "&A-", "ü", "&U,BTF-", "&2D0-"]:
            self.assertRaises(ValueError, decode_mailbox_name, bad)

    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_round_trip(self, name: str) -> None:
        """Any text without lone surrogates survives encode then decode."""
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return
        self.assertEqual(decode_mailbox_name(encode_mailbox_name(name)), name)


_TOKENS = [
    b" ",
    b"(",
    b")",
    b"[",
    b"]",
    b"<",
    b">",
    b".",
    b'"',
    b"\\",
    b"{3}\r\nabc",
    b"{2+}\r\nxy",
    b"\r\n",
    b"*",
    b":",
    b",",
    b"1",
    b"0",
    b"4294967296",
    b"UID",
    b"FETCH",
    b"SEARCH",
    b"STORE",
    b"APPEND",
    b"LIST",
    b"BODY",
    b"BODY.PEEK",
    b"HEADER.FIELDS",
    b"NOT",
    b"OR",
    b"ALL",
    b"NIL",
    b"RETURN",
    b"STATUS",
    b"FLAGS",
    b"+FLAGS",
    b"\\Seen",
    b"INBOX",
    b"&-",
    b"&U,BTFw-",
    b"1-Feb-1994",
    b'"17-Jul-1996 02:44:25 -0700"',
    b"CHARSET",
    b"ID",
    b"LOGIN",
    b"MIME",
    b"~{1}\r\n\x00",
    b"\xff",
]


def _parse_everything(data: bytes) -> list[Command]:
    out = []
    for event in frame([data], framer=CommandFramer(max_line=200, max_literal=50, max_command=400)):
        if isinstance(event, CommandFragments):
            try:
                out.append(parse_command(event.fragments))
            except ParseError as e:
                assert e.text and isinstance(e.text, str)
    return out


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=300))
    def test_random_bytes(self, data: bytes) -> None:
        """Random octets through framer and parser give commands or ParseError, nothing else."""
        _parse_everything(b"t " + data)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.sampled_from(_TOKENS), max_size=40))
    def test_token_soup(self, tokens: list[bytes]) -> None:
        """Grammar-shaped token sequences give commands or ParseError, nothing else."""
        _parse_everything(b"t " + b"".join(tokens) + b"\r\n")

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=30).map(LineFragment),
                st.binary(max_size=10).map(LiteralFragment),
            ),
            max_size=6,
        )
    )
    def test_arbitrary_fragments(self, fragments: list[LineFragment | LiteralFragment]) -> None:
        """parse_command accepts any fragment list a caller might build, raising only ParseError."""
        with contextlib.suppress(ParseError):
            parse_command(fragments)
