"""
Tests for txmail.imap.search: every search key of RFC 3501 section 6.4.4,
nesting, ``*`` in sets, decoded header and body text, and the SEARCH (RFC
3501 section 7.2.5) and ESEARCH (RFC 4731) responses.

The search keys are parsed from command text by the real parser, so the
trees are exactly what a session gets.
"""

from __future__ import annotations

import base64
import datetime

from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_fragment import frame
from txmail.imap.fragment import CommandFragments
from txmail.imap.parser import parse_command
from txmail.imap.search import (
    ESEARCH_OPTIONS,
    SUPPORTED_CHARSETS,
    SearchContext,
    SearchNeeds,
    format_esearch,
    format_search,
    matches,
    search_needs,
)
from txmail.imap.types import Search, SearchAnd, SearchKey, SearchNode, SearchNot, SearchOr, SequenceSet
from txmail.mime import parse_metadata
from txmail.model import MessageInfo


def parse_search(command: bytes) -> Search:
    """Frame and parse ``A1 <command>`` and return its :class:`Search` arguments."""
    events = [e for e in frame([b"A1 " + command + b"\r\n"]) if isinstance(e, CommandFragments)]
    assert len(events) == 1, events
    args = parse_command(events[0].fragments).args
    assert isinstance(args, Search), args
    return args


def epoch(*when: int) -> float:
    return datetime.datetime(*when, tzinfo=datetime.UTC).timestamp()


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


M1 = crlf(
    'From: "Alice Example" <alice@example.com>\n'
    "To: bob@example.org\n"
    "Cc: Carol <carol@example.net>\n"
    "Subject: Lunch plans\n"
    "Date: Mon, 7 Feb 1994 21:52:25 -0800\n"
    "\n"
    "Let's meet at noon.\n"
)

M2 = crlf(
    "From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>\n"
    "To: alice@example.com\n"
    "Bcc: secret@example.com\n"
    "Subject: =?UTF-8?B?" + base64.b64encode("Grüße aus Köln".encode()).decode() + "?=\n"
    "Date: Tue, 1 Mar 2022 23:30:00 -0500\n"
    "X-Mailer: Mutt/2.2\n"
    "MIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
) + base64.encodebytes("Die Straße ist lang.\n".encode()).replace(b"\n", b"\r\n")

M3 = crlf(
    "From: Bob <bob@example.org>\n"
    "To: team@example.org\n"
    "Subject: Quarterly\n"
    " Report\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="XYZ"\n'
    "\n"
    "--XYZ\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "Let's have caf=C3=A9 au lait and discuss the=\n"
    " numbers.\n"
    "--XYZ\n"
    "Content-Type: application/octet-stream\n"
    "Content-Transfer-Encoding: base64\n"
    "\n" + base64.b64encode(b"hiddenword in a binary attachment").decode() + "\n"
    "--XYZ--\n"
)

# Raw UTF-8 in a header (RFC 6532), an unparsable Date:, no From:, and an
# attached message.
M4 = crlf(
    "To: team@example.org\n"
    "Subject: Überraschung\n"
    "Date: sometime last week\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="b1"\n'
    "\n"
    "--b1\n"
    "Content-Type: text/plain\n"
    "\n"
    "See attached.\n"
    "--b1\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "From: inner@example.com\n"
    "Subject: =?iso-8859-1?q?Inner_t=F6pic?=\n"
    "\n"
    "Deeply nested text.\n"
    "--b1--\n"
)

#: (info, raw message) by message sequence number - 1.
MAILBOX = [
    (MessageInfo(10, frozenset({"\\Seen", "\\Answered"}), 100, epoch(1994, 2, 8, 5, 52, 25), 5), M1),
    (
        MessageInfo(20, frozenset({"\\Flagged", "\\Draft", "$Important"}), 2000, epoch(2022, 3, 2, 4, 30), 6),
        M2,
    ),
    (MessageInfo(30, frozenset({"\\Deleted"}), 5000, epoch(2023, 6, 15), 7), M3),
    (MessageInfo(40, frozenset({"\\Seen"}), 300, epoch(2023, 6, 15, 23, 59, 59), 8), M4),
]
METADATA = [parse_metadata(raw) for _, raw in MAILBOX]
CTX = SearchContext(max_seq=4, max_uid=40, recent_uids=frozenset({30, 40}))


class SearchTestCase(SynchronousTestCase):
    def search(self, command: bytes, ctx: SearchContext = CTX) -> list[int]:
        """
        Run ``SEARCH <command>`` over :data:`MAILBOX` the way a session does,
        giving metadata and message only when :func:`search_needs` asks.
        """
        key = parse_search(b"SEARCH " + command).key
        needs = search_needs(key)
        found = []
        for seq, ((info, raw), md) in enumerate(zip(MAILBOX, METADATA, strict=True), 1):
            if matches(
                key,
                ctx,
                seq,
                info,
                md if needs.metadata else None,
                raw if needs.message else None,
            ):
                found.append(seq)
        return found

    def check(self, command: bytes, expected: list[int]) -> None:
        self.assertEqual(self.search(command), expected, command)


class FlagKeyTests(SearchTestCase):
    """ALL and the flag keys (RFC 3501 section 6.4.4)."""

    def test_all(self) -> None:
        self.check(b"ALL", [1, 2, 3, 4])

    def test_system_flags(self) -> None:
        self.check(b"ANSWERED", [1])
        self.check(b"UNANSWERED", [2, 3, 4])
        self.check(b"DELETED", [3])
        self.check(b"UNDELETED", [1, 2, 4])
        self.check(b"DRAFT", [2])
        self.check(b"UNDRAFT", [1, 3, 4])
        self.check(b"FLAGGED", [2])
        self.check(b"UNFLAGGED", [1, 3, 4])
        self.check(b"SEEN", [1, 4])
        self.check(b"UNSEEN", [2, 3])

    def test_keyword(self) -> None:
        self.check(b"KEYWORD $Important", [2])
        self.check(b"UNKEYWORD $Important", [1, 3, 4])
        self.check(b"KEYWORD $Junk", [])
        self.check(b"UNKEYWORD $Junk", [1, 2, 3, 4])

    def test_keyword_case_insensitive(self) -> None:
        """Flags are case-insensitive (RFC 9051 section 2.3.2)."""
        self.check(b"KEYWORD $IMPORTANT", [2])
        self.check(b"unkeyword $important", [1, 3, 4])

    def test_recent_new_old(self) -> None:
        """RECENT is the session's recent UIDs; NEW is RECENT UNSEEN; OLD is NOT RECENT."""
        self.check(b"RECENT", [3, 4])
        self.check(b"NEW", [3])
        self.check(b"OLD", [1, 2])

    def test_no_recent(self) -> None:
        ctx = SearchContext(max_seq=4, max_uid=40)
        self.assertEqual(self.search(b"RECENT", ctx), [])
        self.assertEqual(self.search(b"NEW", ctx), [])
        self.assertEqual(self.search(b"OLD", ctx), [1, 2, 3, 4])


class SizeAndDateTests(SearchTestCase):
    def test_larger_smaller(self) -> None:
        """LARGER/SMALLER are strict comparisons with the RFC 822 size."""
        self.check(b"LARGER 2000", [3])
        self.check(b"LARGER 1999", [2, 3])
        self.check(b"SMALLER 300", [1])
        self.check(b"SMALLER 301", [1, 4])
        self.check(b"LARGER 100 SMALLER 5000", [2, 4])

    def test_internal_date(self) -> None:
        """BEFORE/ON/SINCE use the internal date's date in UTC, disregarding time."""
        self.check(b"ON 15-Jun-2023", [3, 4])
        self.check(b"BEFORE 15-Jun-2023", [1, 2])
        self.check(b"SINCE 15-Jun-2023", [3, 4])
        self.check(b"SINCE 16-Jun-2023", [])
        # 2022-03-02 04:30 UTC: the Date: field says 1 Mar, the internal date 2 Mar.
        self.check(b"ON 2-Mar-2022", [2])
        self.check(b"ON 1-Mar-2022", [])
        self.check(b"SINCE 2-Mar-2022", [2, 3, 4])
        self.check(b"BEFORE 8-Feb-1994", [])
        self.check(b"BEFORE 9-Feb-1994", [1])

    def test_sent_dates(self) -> None:
        """SENT* use the Date: field's date in its own zone."""
        self.check(b"SENTON 1-Mar-2022", [2])
        self.check(b"SENTON 2-Mar-2022", [])
        self.check(b"SENTON 7-Feb-1994", [1])
        self.check(b"SENTBEFORE 1-Mar-2022", [1])
        self.check(b"SENTBEFORE 2-Mar-2022", [1, 2])
        self.check(b"SENTSINCE 1-Mar-2022", [2])
        self.check(b"SENTSINCE 1-Jan-1990", [1, 2])

    def test_sent_without_date(self) -> None:
        """A missing (3) or unparsable (4) Date: never matches SENT*, but NOT of it does."""
        self.check(b"OR SENTBEFORE 1-Jan-2100 SENTSINCE 1-Jan-1900", [1, 2])
        self.check(b"NOT SENTON 1-Mar-2022", [1, 3, 4])


class SetTests(SearchTestCase):
    def test_sequence_set(self) -> None:
        self.check(b"1,3", [1, 3])
        self.check(b"2:3", [2, 3])
        self.check(b"3:2", [2, 3])

    def test_sequence_star(self) -> None:
        """``*`` in a bare set is the highest message number."""
        self.check(b"*", [4])
        self.check(b"2:*", [2, 3, 4])
        self.check(b"1,*", [1, 4])

    def test_uid_set(self) -> None:
        self.check(b"UID 20:30", [2, 3])
        self.check(b"UID 10,40", [1, 4])
        self.check(b"UID 11:19", [])

    def test_uid_star(self) -> None:
        """``*`` in a UID set is the highest UID (40), not the message count."""
        self.check(b"UID *", [4])
        self.check(b"UID 35:*", [4])
        self.check(b"UID 4", [])
        # RFC 3501 section 6.4.8: "n:*" with n above the highest UID means "max:n".
        self.check(b"UID 50:*", [4])

    def test_star_from_context(self) -> None:
        """``*`` is taken from the context, not from the messages seen."""
        ctx = SearchContext(max_seq=3, max_uid=30)
        self.assertEqual(self.search(b"*", ctx), [3])
        self.assertEqual(self.search(b"UID *", ctx), [3])


class HeaderKeyTests(SearchTestCase):
    def test_address_keys(self) -> None:
        """FROM/TO/CC/BCC match the whole field value: names and addresses."""
        self.check(b"FROM alice", [1])
        self.check(b'FROM "Alice Example"', [1])
        self.check(b"FROM example.org", [3])
        self.check(b"TO alice", [2])
        self.check(b"TO team@example.org", [3, 4])
        self.check(b"CC carol", [1])
        self.check(b"CC nobody", [])
        self.check(b"BCC secret@", [2])

    def test_absent_field(self) -> None:
        """A message without the field does not match, even the empty string (4 has no From:)."""
        self.check(b'FROM ""', [1, 2, 3])
        self.check(b'CC ""', [1])

    def test_encoded_word_from(self) -> None:
        """RFC 2047 encoded display names are decoded before matching."""
        self.check('FROM "jürgen müller"'.encode(), [2])
        self.check('FROM "JÜRGEN"'.encode(), [2])
        self.check(b"FROM Q?J", [])

    def test_encoded_subject(self) -> None:
        """A base64 encoded-word subject matches its decoded UTF-8 text, case-insensitively."""
        self.check('SUBJECT "Grüße aus Köln"'.encode(), [2])
        self.check('SUBJECT "KÖLN"'.encode(), [2])
        # casefold: "ß" is "ss".
        self.check(b"SUBJECT GRUSSE", [])
        self.check('SUBJECT "GRÜSSE"'.encode(), [2])
        self.check('CHARSET UTF-8 SUBJECT "köln"'.encode(), [2])

    def test_folded_subject(self) -> None:
        """Header values are unfolded (RFC 5322 section 2.2.3)."""
        self.check(b'SUBJECT "quarterly report"', [3])

    def test_raw_utf8_subject(self) -> None:
        """Raw UTF-8 in a header (RFC 6532) is read as UTF-8."""
        self.check('SUBJECT "überraschung"'.encode(), [4])

    def test_subject(self) -> None:
        self.check(b"SUBJECT lunch", [1])
        self.check(b"SUBJECT LUNCH", [1])
        self.check(b'SUBJECT ""', [1, 2, 3, 4])

    def test_top_level_headers_only(self) -> None:
        """Header keys look at the message's own header, not an attached message's."""
        self.check(b"FROM inner", [])

    def test_header(self) -> None:
        """HEADER: case-insensitive field name; "" matches any message with the field."""
        self.check(b'HEADER X-Mailer ""', [2])
        self.check(b"HEADER x-mailer mutt", [2])
        self.check(b"HEADER X-MAILER elm", [])
        self.check(b'HEADER X-Missing ""', [])
        self.check(b'HEADER Content-Type "multipart/mixed"', [3, 4])
        self.check(b'HEADER Date "-0800"', [1])


class BodyKeyTests(SearchTestCase):
    def test_body_plain(self) -> None:
        self.check(b"BODY noon", [1])
        self.check(b'BODY "MEET AT NOON"', [1])
        # In the header only.
        self.check(b"BODY lunch", [])

    def test_body_base64(self) -> None:
        """A base64 text body is decoded, then its charset; casefold makes STRASSE match Straße."""
        self.check('BODY "straße"'.encode(), [2])
        self.check(b"BODY STRASSE", [2])
        self.check(b"BODY RGll", [])  # the base64 text itself is not searched

    def test_body_quoted_printable_part(self) -> None:
        """A quoted-printable leaf of a multipart is decoded (soft line breaks too)."""
        self.check('BODY "café au lait"'.encode(), [3])
        self.check('BODY "CAFÉ"'.encode(), [3])
        self.check(b'BODY "the numbers"', [3])
        self.check(b"BODY C3", [])

    def test_body_skips_binary_parts(self) -> None:
        """Non-text leaf parts are not searched, decoded or not."""
        self.check(b"BODY hiddenword", [])

    def test_body_attached_message(self) -> None:
        """An attached message's header fields (decoded) and text are part of the body."""
        self.check(b'BODY "deeply nested"', [4])
        self.check('BODY "inner TÖPIC"'.encode(), [4])
        self.check(b"BODY inner@example.com", [4])
        self.check(b'BODY "see attached"', [4])

    def test_text(self) -> None:
        """TEXT is the header fields or the body."""
        self.check(b"TEXT lunch", [1])
        self.check(b"TEXT noon", [1])
        self.check(b"TEXT alice", [1, 2])
        self.check(b"TEXT x-mailer", [2])
        self.check('TEXT "grüße"'.encode(), [2])
        self.check(b"TEXT inner@", [4])
        self.check(b"TEXT hiddenword", [])

    def test_field_name_spellings(self) -> None:
        """Field names compare case-insensitively without the blanks before the colon, also past the remembered spellings."""
        from txmail.imap import search

        md = parse_metadata(b"X-Foo \t: bar\r\nx-FOO: baz\r\n\r\nbody")
        key = parse_search(b"SEARCH HEADER x-foo baz").key
        info = MAILBOX[0][0]
        self.assertTrue(matches(key, CTX, 1, info, md, None))
        for n in range(5000):  # more spellings than are remembered
            search._name_key(f"X-{n}")
        self.assertLessEqual(len(search._NAMES), 4096)
        other = parse_metadata(b"X-Foo\t : baz\r\n\r\nbody")
        self.assertTrue(matches(key, CTX, 1, info, other, None))
        self.assertFalse(matches(parse_search(b"SEARCH HEADER x-foo qux").key, CTX, 1, info, other, None))

    def test_text_with_or_without_metadata(self) -> None:
        """TEXT reads the header fields from the metadata when given, else from the message: the same answers."""
        for word in (b"lunch", b"alice", b"x-mailer", "grüße".encode(), b"inner@", b"hiddenword", b"subject"):
            key = parse_search(b'SEARCH TEXT "' + word + b'"').key
            for seq, ((info, raw), md) in enumerate(zip(MAILBOX, METADATA, strict=True), 1):
                self.assertEqual(
                    matches(key, CTX, seq, info, md, raw),
                    matches(key, CTX, seq, info, None, raw),
                    (word, seq),
                )

    def test_empty_string(self) -> None:
        self.check(b'BODY ""', [1, 2, 3, 4])
        self.check(b'TEXT ""', [1, 2, 3, 4])


class CombinationTests(SearchTestCase):
    def test_implicit_and(self) -> None:
        self.check(b"UID 1:30 NOT DELETED", [1, 2])
        self.check(b"SEEN FROM alice", [1])
        self.check(b"SEEN TO team", [4])

    def test_or_not(self) -> None:
        self.check(b"OR ANSWERED FLAGGED", [1, 2])
        self.check(b"NOT OR SEEN FLAGGED", [3])
        self.check(b"OR NOT SEEN DELETED", [2, 3])
        self.check(b"NOT NOT SEEN", [1, 4])

    def test_nested_parentheses(self) -> None:
        """OR with NOT inside parenthesised lists."""
        self.check(b"OR (SEEN ANSWERED) NOT (UNDELETED OR ANSWERED DRAFT)", [1, 3, 4])
        self.check(b"(OR (NOT SEEN LARGER 1000) (SUBJECT lunch)) UNDELETED", [1, 2])
        self.check(b"NOT (2:* NOT (OR BODY noon BODY nested))", [1, 4])
        self.check(b"((((ALL))))", [1, 2, 3, 4])

    def test_rfc3501_example(self) -> None:
        """RFC 3501 section 6.4.4: ``FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"``."""
        self.check(b'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"', [2])

    def test_modseq(self) -> None:
        """MODSEQ (RFC 7162 section 3.1.5): modseq at least the given value."""
        key = SearchKey("MODSEQ", (7,))
        found = [s for s, (info, _) in enumerate(MAILBOX, 1) if matches(key, CTX, s, info)]
        self.assertEqual(found, [3, 4])
        key = SearchKey("MODSEQ", ("/flags/\\draft", "all", 8))
        self.assertEqual([s for s, (info, _) in enumerate(MAILBOX, 1) if matches(key, CTX, s, info)], [4])


class DataTests(SynchronousTestCase):
    """What :func:`matches` must be given, and what it does without it."""

    info, raw = MAILBOX[0]

    def test_needs(self) -> None:
        def needs(command: bytes) -> SearchNeeds:
            return search_needs(parse_search(b"SEARCH " + command).key)

        self.assertEqual(needs(b"SEEN UID 1:* LARGER 5 SINCE 1-Jan-2000 2:4"), SearchNeeds(False, False))
        for key in (b"FROM a", b"TO a", b"CC a", b"BCC a", b"SUBJECT a", b"HEADER X a"):
            self.assertEqual(needs(key), SearchNeeds(True, False), key)
        for key in (b"SENTBEFORE 1-Jan-2000", b"SENTON 1-Jan-2000", b"SENTSINCE 1-Jan-2000"):
            self.assertEqual(needs(key), SearchNeeds(True, False), key)
        self.assertEqual(needs(b"BODY a"), SearchNeeds(False, True))
        self.assertEqual(needs(b"TEXT a"), SearchNeeds(False, True))
        self.assertEqual(needs(b"SEEN OR NOT (UID 1 BODY x) (NOT FROM y)"), SearchNeeds(True, True))

    def test_header_key_from_message(self) -> None:
        """Without metadata, header keys parse the message when it is given."""
        key = parse_search(b"SEARCH FROM alice").key
        self.assertTrue(matches(key, CTX, 1, self.info, None, self.raw))

    def test_body_without_metadata(self) -> None:
        key = parse_search(b"SEARCH BODY noon").key
        self.assertTrue(matches(key, CTX, 1, self.info, None, self.raw))
        self.assertTrue(matches(key, CTX, 1, self.info, METADATA[0], self.raw))

    def test_missing_data_is_an_error(self) -> None:
        """Asking for a key without its data is a programming error, not a silent mismatch."""
        self.assertRaises(ValueError, matches, parse_search(b"SEARCH FROM a").key, CTX, 1, self.info)
        self.assertRaises(
            ValueError, matches, parse_search(b"SEARCH BODY a").key, CTX, 1, self.info, METADATA[0]
        )
        self.assertRaises(
            ValueError, matches, parse_search(b"SEARCH TEXT a").key, CTX, 1, self.info, METADATA[0]
        )

    def test_short_circuit(self) -> None:
        """A cheap key that decides the answer spares reading the message."""
        key = parse_search(b"SEARCH OR SEEN BODY x").key
        self.assertTrue(matches(key, CTX, 1, self.info))
        key = parse_search(b"SEARCH UNSEEN BODY x").key
        self.assertFalse(matches(key, CTX, 1, self.info))

    def test_unknown_key(self) -> None:
        self.assertRaises(ValueError, matches, SearchKey("X-FUZZY", ("a",)), CTX, 1, self.info)

    def test_hand_built_tree(self) -> None:
        """Trees built without the parser evaluate the same way."""
        key: SearchNode = SearchAnd(
            (
                SearchOr(SearchKey("SEEN"), SearchKey("FLAGGED")),
                SearchNot(SearchKey("UID", (SequenceSet(((20, None),)),))),
                SearchKey("ON", (datetime.date(1994, 2, 8),)),
            )
        )
        self.assertTrue(matches(key, CTX, 1, self.info))

    def test_unlabelled_8bit_body(self) -> None:
        """An 8-bit body without a charset is read as UTF-8 when it is valid UTF-8."""
        raw = "Subject: x\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n".encode()
        info = MessageInfo(1, frozenset(), len(raw), 0.0, 1)
        key = parse_search('SEARCH BODY "KÖLN"'.encode()).key
        self.assertTrue(matches(key, CTX, 1, info, None, raw))

    def test_broken_message(self) -> None:
        """Garbage headers and body never raise; undecodable encoded-words stay as written."""
        raw = (
            b"Subject: =?bogus-charset?q?abc?= =?utf-8?b?@@@?=\r\n"
            b"From: \xff\xfe <x@y>\r\n"
            b"Date: Mon, 99 Foo 2020 99:99:99 +9999\r\n"
            b"Content-Type: text/plain; charset=no-such-charset\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"\r\n"
            b"!!!not base64 \xff\r\n"
        )
        md = parse_metadata(raw)
        info = MessageInfo(1, frozenset(), len(raw), 0.0, 1)
        ctx = SearchContext(max_seq=1, max_uid=1)

        def run(command: bytes) -> bool:
            return matches(parse_search(b"SEARCH " + command).key, ctx, 1, info, md, raw)

        self.assertTrue(run(b"SUBJECT abc"))
        self.assertTrue(run('FROM "ÿþ"'.encode()))
        self.assertFalse(run(b"SENTSINCE 1-Jan-1970"))
        self.assertFalse(run(b"BODY zzz"))
        self.assertTrue(run(b'TEXT ""'))


class FormatTests(SynchronousTestCase):
    def test_search(self) -> None:
        """RFC 3501 section 7.2.5: ``* SEARCH 2 3 6``; no match is a bare ``* SEARCH``."""
        self.assertEqual(format_search([2, 3, 6]), b"* SEARCH 2 3 6\r\n")
        self.assertEqual(format_search([]), b"* SEARCH\r\n")
        self.assertEqual(format_search([4294967295]), b"* SEARCH 4294967295\r\n")

    def test_rfc4731_examples(self) -> None:
        """The examples of RFC 4731 section 3.1."""
        self.assertEqual(
            format_esearch("A282", False, [2, 10, 11], ["MIN", "COUNT"]),
            b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n',
        )
        self.assertEqual(
            format_esearch("A283", False, [2, 10, 11], []),
            b'* ESEARCH (TAG "A283") ALL 2,10:11\r\n',
        )
        self.assertEqual(
            format_esearch("A284", False, [4, 5, 9], ["MIN"]),
            b'* ESEARCH (TAG "A284") MIN 4\r\n',
        )
        self.assertEqual(
            format_esearch("A285", True, [7, 100, 3800], ["MIN", "MAX"]),
            b'* ESEARCH (TAG "A285") UID MIN 7 MAX 3800\r\n',
        )
        self.assertEqual(
            format_esearch("A286", False, range(1, 16), ["COUNT"]),
            b'* ESEARCH (TAG "A286") COUNT 15\r\n',
        )

    def test_no_match(self) -> None:
        """No MIN/MAX/ALL without a match, but the response is still sent, COUNT 0."""
        self.assertEqual(
            format_esearch("A1", True, [], ["MIN", "MAX", "ALL", "COUNT"]),
            b'* ESEARCH (TAG "A1") UID COUNT 0\r\n',
        )
        self.assertEqual(format_esearch("A2", False, [], ["MIN"]), b'* ESEARCH (TAG "A2")\r\n')
        self.assertEqual(format_esearch("A3", False, [], []), b'* ESEARCH (TAG "A3")\r\n')

    def test_canonical_order_and_compaction(self) -> None:
        """Options in any order and case give MIN MAX ALL COUNT; ALL is sorted and merged."""
        self.assertEqual(
            format_esearch("t", False, [11, 3, 4, 5, 2, 10, 7, 4], ["count", "ALL", "MAX", "MIN"]),
            b'* ESEARCH (TAG "t") MIN 2 MAX 11 ALL 2:5,7,10:11 COUNT 7\r\n',
        )
        self.assertEqual(
            format_esearch("t", True, [9], ["ALL", "ALL"]),
            b'* ESEARCH (TAG "t") UID ALL 9\r\n',
        )

    def test_unknown_option(self) -> None:
        self.assertRaises(ValueError, format_esearch, "t", False, [1], ["SAVE"])

    def test_constants(self) -> None:
        self.assertEqual(ESEARCH_OPTIONS, ("MIN", "MAX", "ALL", "COUNT"))
        self.assertIn("US-ASCII", SUPPORTED_CHARSETS)
        self.assertIn("UTF-8", SUPPORTED_CHARSETS)

    def test_end_to_end(self) -> None:
        """Parse a UID SEARCH RETURN, evaluate it, and answer with ESEARCH."""
        events = [
            e
            for e in frame([b"A9 UID SEARCH RETURN (MIN COUNT ALL) OR SEEN FLAGGED\r\n"])
            if isinstance(e, CommandFragments)
        ]
        command = parse_command(events[0].fragments)
        args = command.args
        assert isinstance(args, Search)
        uids = [info.uid for seq, (info, _) in enumerate(MAILBOX, 1) if matches(args.key, CTX, seq, info)]
        self.assertEqual(uids, [10, 20, 40])
        self.assertEqual(
            format_esearch(command.tag, args.uid, uids, args.return_options or ()),
            b'* ESEARCH (TAG "A9") UID MIN 10 ALL 10,20,40 COUNT 3\r\n',
        )
