"""
Regression tests for the conformance gaps of issue 12 section 1: each test
drives the IMAP adapter on a StringTransport and a task.Clock (the setup of
:mod:`tests.imap.test_server`) and names the RFC section it checks.
"""

from __future__ import annotations

from typing import Any

from tests.imap.test_server import LOGIN, ServerTestCase
from txmail.imap.fragment import LineFragment
from txmail.imap.parser import ParseError, parse_command
from txmail.model import FlagMode

__all__: list[str] = []


def _parse_error(line: bytes) -> ParseError:
    try:
        parse_command([LineFragment(line)])
    except ParseError as e:
        return e
    raise AssertionError(f"{line!r} parsed")


class ListExtendedTests(ServerTestCase):
    """RFC 5258 LIST-EXTENDED."""

    def setUp(self) -> None:
        super().setUp()
        for name in ("Fruit", "Fruit/Apple", "Fruit/Banana", "Tofu", "Tofu/Firm", "Vegetable"):
            self.successResultOf(self.store.create_mailbox(name))
        for name in ("INBOX", "Fruit/Banana", "Tofu", "Tofu/Firm", "Vegetable"):
            self.successResultOf(self.store.subscribe(name))

    def list(self, command: bytes) -> bytes:
        proto, transport = self.login(select=None)
        return self.send(proto, transport, b"l1 " + command + b"\r\n")

    def test_unknown_selection_option_parser(self) -> None:
        """RFC 5258 section 3: an unknown selection option is a syntax error (BAD)."""
        self.assertEqual(_parse_error(b'a LIST (SUBSCRIBED BOGUS) "" "*"').tag, "a")
        self.assertEqual(_parse_error(b'a LIST (BOGUS) "" "*"').tag, "a")

    def test_unknown_return_option_parser(self) -> None:
        """RFC 5258 section 3: an unknown return option is a syntax error (BAD)."""
        self.assertEqual(_parse_error(b'a LIST "" "*" RETURN (BOGUS)').tag, "a")
        self.assertEqual(_parse_error(b'a LIST "" "*" RETURN (CHILDREN BOGUS)').tag, "a")

    def test_recursivematch_alone_parser(self) -> None:
        """RFC 5258 section 3.1: RECURSIVEMATCH alone or with only REMOTE is BAD."""
        for line in (
            b'a LIST (RECURSIVEMATCH) "" "*"',
            b'a LIST (REMOTE RECURSIVEMATCH) "" "*"',
            b'a LIST (RECURSIVEMATCH REMOTE) "" "*"',
        ):
            self.assertEqual(_parse_error(line).tag, "a", line)
        for line in (
            b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"',
            b'a LIST (REMOTE SUBSCRIBED RECURSIVEMATCH) "" "*"',
            b'a LIST (REMOTE) "" "*" RETURN (SUBSCRIBED CHILDREN)',
            b'a LIST () "" "*" RETURN ()',
        ):
            parse_command([LineFragment(line)])

    def test_bad_options_over_the_wire(self) -> None:
        """RFC 5258 section 3: unknown options and a lone RECURSIVEMATCH get a tagged BAD."""
        proto, transport = self.login(select=None)
        for line in (
            b'l1 LIST (BOGUS) "" "*"\r\n',
            b'l1 LIST "" "*" RETURN (BOGUS)\r\n',
            b'l1 LIST (RECURSIVEMATCH) "" "*"\r\n',
            b'l1 LIST (REMOTE RECURSIVEMATCH) "" "*"\r\n',
        ):
            out = self.send(proto, transport, line)
            self.assertTrue(out.startswith(b"l1 BAD "), (line, out))
            self.assertNotIn(b"* LIST", out)

    def test_childinfo_when_child_not_returned(self) -> None:
        """
        RFC 5258 section 3.5: with ``%``, a parent whose subscribed child is
        not returned gets CHILDINFO, whether or not it is subscribed itself.
        """
        out = self.list(b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
        self.assertEqual(
            out,
            b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX\r\n'
            b'* LIST (\\HasChildren) "/" Fruit ("CHILDINFO" ("SUBSCRIBED"))\r\n'
            b'* LIST (\\HasChildren \\Subscribed) "/" Tofu ("CHILDINFO" ("SUBSCRIBED"))\r\n'
            b'* LIST (\\HasNoChildren \\Subscribed) "/" Vegetable\r\n'
            b"l1 OK LIST completed\r\n",
        )

    def test_no_childinfo_when_children_returned(self) -> None:
        """
        RFC 5258 section 3.5: with ``*`` every subscribed child is returned
        itself, so no parent gets CHILDINFO and an unsubscribed parent is not
        returned.
        """
        out = self.list(b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"')
        self.assertNotIn(b"CHILDINFO", out)
        self.assertNotIn(b" Fruit\r\n", out)
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Banana\r\n', out)
        self.assertIn(b'* LIST (\\HasChildren \\Subscribed) "/" Tofu\r\n', out)
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed) "/" Tofu/Firm\r\n', out)

    def test_no_childinfo_without_recursivematch(self) -> None:
        """RFC 5258 section 3.5: CHILDINFO only with RECURSIVEMATCH."""
        out = self.list(b'LIST (SUBSCRIBED) "" "%"')
        self.assertNotIn(b"CHILDINFO", out)
        self.assertNotIn(b" Fruit\r\n", out)
        self.assertIn(b'* LIST (\\HasChildren \\Subscribed) "/" Tofu\r\n', out)


class NotModifiedUTF7Tests(ServerTestCase):
    """A mailbox name that is an astring but not modified UTF-7 (RFC 3501 section 5.1.3)."""

    def test_select_examine_status(self) -> None:
        """RFC 3501 sections 6.3.1, 6.3.2 and 6.3.10: NO, not BAD."""
        proto, transport = self.login(select=None)
        for command, tag in ((b"SELECT", b"x1"), (b"EXAMINE", b"x2"), (b"STATUS", b"x3")):
            line = (
                tag
                + b" "
                + command
                + b' "&Jjo"'
                + (b" (MESSAGES)" if command == b"STATUS" else b"")
                + b"\r\n"
            )
            out = self.send(proto, transport, line)
            self.assertTrue(out.startswith(tag + b" NO [NONEXISTENT] "), (line, out))
            self.assertNotIn(b"* ", out)

    def test_failed_select_deselects(self) -> None:
        """RFC 3501 section 6.3.1: a SELECT that fails leaves no mailbox selected."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"x1 SELECT a&b\r\n")
        # RFC 7162 section 3.2.11: the mailbox selected at login is closed.
        self.assertTrue(out.startswith(b"* OK [CLOSED] Previous mailbox closed\r\nx1 NO [NONEXISTENT] "), out)
        out = self.send(proto, transport, b"x2 FETCH 1 FLAGS\r\n")
        self.assertTrue(out.startswith(b"x2 BAD "), out)

    def test_list_finds_nothing(self) -> None:
        """RFC 3501 section 6.3.8: LIST and LSUB answer OK with no results."""
        proto, transport = self.login(select=None)
        self.assertEqual(self.send(proto, transport, b'x1 LIST "" "&Jjo"\r\n'), b"x1 OK LIST completed\r\n")
        self.assertEqual(self.send(proto, transport, b'x2 LIST "&Jjo" "*"\r\n'), b"x2 OK LIST completed\r\n")
        self.assertEqual(self.send(proto, transport, b'x3 LSUB "" "a&b*"\r\n'), b"x3 OK LSUB completed\r\n")
        out = self.send(proto, transport, b'x4 LIST "" ("&Jjo" "INBOX")\r\n')
        self.assertEqual(out, b'* LIST (\\HasNoChildren) "/" INBOX\r\nx4 OK LIST completed\r\n')

    def test_other_commands_answer_no(self) -> None:
        """RFC 3501 section 6.3: CREATE, DELETE, RENAME, APPEND, COPY answer NO; the session goes on."""
        proto, transport = self.login()
        for line in (
            b"x1 CREATE a&b\r\n",
            b"x2 DELETE a&b\r\n",
            b"x3 RENAME INBOX a&b\r\n",
            b"x4 COPY 1 a&b\r\n",
            b"x5 SUBSCRIBE a&b\r\n",
            b"x6 APPEND a&b {2+}\r\nhi\r\n",
        ):
            out = self.send(proto, transport, line)
            self.assertTrue(out.startswith(line[:3] + b"NO ["), (line, out))
        out = self.send(proto, transport, b"x7 NOOP\r\n")
        self.assertEqual(out, b"x7 OK NOOP completed\r\n")


class ExamineRecentTests(ServerTestCase):
    """RFC 3501 section 6.3.2: EXAMINE MUST NOT cause messages to lose \\Recent."""

    def examine(self) -> tuple[Any, Any, bytes]:
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"e1 EXAMINE INBOX\r\n")
        self.assertTrue(out.endswith(b"e1 OK [READ-ONLY] EXAMINE completed\r\n"), out)
        return proto, transport, out

    def test_messages_present_at_examine(self) -> None:
        """RFC 3501 section 6.3.2: shown \\Recent, and still \\Recent for the next SELECT."""
        proto, transport, out = self.examine()
        self.assertIn(b"* 2 RECENT\r\n", out)
        out = self.send(proto, transport, b"e2 FETCH 1:2 FLAGS\r\n")
        self.assertEqual(
            out,
            b"* 1 FETCH (FLAGS (\\Recent))\r\n* 2 FETCH (FLAGS (\\Recent))\r\ne2 OK FETCH completed\r\n",
        )
        self.assertEqual(self.successResultOf(self.mailbox.status()).recent, 2)
        # A second EXAMINE, and then a SELECT, still see them \Recent.
        _, _, out = self.examine()
        self.assertIn(b"* 2 RECENT\r\n", out)
        proto2, transport2 = self.login(select=None)
        out = self.send(proto2, transport2, b"s1 SELECT INBOX\r\n")
        self.assertIn(b"* 2 RECENT\r\n", out)
        self.assertEqual(self.successResultOf(self.mailbox.status()).recent, 0)

    def test_only_unclaimed_are_recent(self) -> None:
        """RFC 3501 sections 2.3.2 and 6.3.2: messages a SELECT claimed are not \\Recent in a later EXAMINE."""
        proto, transport = self.login()  # claims both
        self.successResultOf(self.mailbox.append(b"Subject: three\r\n\r\nthird\r\n", (), 1_600_000_000))
        self.send(proto, transport, b"x LOGOUT\r\n")
        self.successResultOf(self.mailbox.append(b"Subject: four\r\n\r\nfourth\r\n", (), 1_600_000_000))
        proto, transport, out = self.examine()
        # The third was claimed by the selecting session when it arrived.
        self.assertIn(b"* 4 EXISTS\r\n* 1 RECENT\r\n", out)
        out = self.send(proto, transport, b"e2 FETCH 3:4 FLAGS\r\n")
        self.assertEqual(
            out, b"* 3 FETCH (FLAGS ())\r\n* 4 FETCH (FLAGS (\\Recent))\r\ne2 OK FETCH completed\r\n"
        )

    def test_messages_arriving_while_examined(self) -> None:
        """RFC 3501 section 6.3.2: a message that arrives during EXAMINE is shown \\Recent and not claimed."""
        proto, transport, _ = self.examine()
        self.successResultOf(self.mailbox.append(b"Subject: new\r\n\r\nnew\r\n", (), 1_600_000_000))
        out = self.send(proto, transport, b"n1 NOOP\r\n")
        self.assertEqual(out, b"* 3 EXISTS\r\n* 3 RECENT\r\nn1 OK NOOP completed\r\n")
        self.assertEqual(self.successResultOf(self.mailbox.status()).recent, 3)
        proto2, transport2 = self.login(select=None)
        out = self.send(proto2, transport2, b"s1 SELECT INBOX\r\n")
        self.assertIn(b"* 3 RECENT\r\n", out)


def _maximal_id(tag: bytes, value: bytes) -> bytes:
    """An RFC 2971 ID command with the most fields (30) of the longest names (30 octets)."""
    pairs = b" ".join(b'"%s" %s' % (b"field-%024d" % i, value) for i in range(30))
    return tag + b" ID (" + pairs + b")\r\n"


class LineLengthTests(ServerTestCase):
    """The default command line limit (RFC 2971 section 3.3, RFC 7162 section 4)."""

    def test_maximal_id_command(self) -> None:
        """
        RFC 2971 section 3.3: 30 pairs with values of 1,024 octets are legal
        (about 32 KB on one line), before and after login, with the default
        limits; so are the same values written with every octet escaped.
        """
        plain = _maximal_id(b"i1", b'"' + b"v" * 1024 + b'"')
        escaped = _maximal_id(b"i2", b'"' + b'\\"' * 1024 + b'"')
        self.assertGreater(len(plain), 31_000)
        self.assertGreater(len(escaped), 62_000)
        proto, transport = self.connect()
        transport.clear()
        for line in (plain, escaped):
            out = self.send(proto, transport, line)
            self.assertTrue(out.startswith(b"* ID ("), out[:100])
            self.assertTrue(out.endswith(line[:3] + b"OK ID completed\r\n"), out)
        self.send(proto, transport, LOGIN)
        # In pieces, as a slow client sends it.
        transport.clear()
        slow = _maximal_id(b"i3", b'"' + b"v" * 1024 + b'"')
        for i in range(0, len(slow), 1000):
            proto.dataReceived(slow[i : i + 1000])
        self.assertTrue(transport.value().endswith(b"i3 OK ID completed\r\n"), transport.value()[-200:])

    def test_line_limit_stays_bounded(self) -> None:
        """RFC 3501 section 9 leaves the limit to the server: a line over 64 KiB is refused and the session goes on."""
        proto, transport = self.connect()
        transport.clear()
        out = self.send(proto, transport, b'i1 ID ("name" "' + b"x" * 70_000 + b'")\r\n')
        self.assertEqual(out, b"i1 BAD Line too long\r\n")
        self.assertLess(proto.session.buffered_input, 65_536)  # type: ignore[union-attr]
        out = self.send(proto, transport, b"i2 NOOP\r\n")
        self.assertEqual(out, b"i2 OK NOOP completed\r\n")


class LsubTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        for name in ("foo", "foo/bar", "foo/bar/baz", "top", "top/sub"):
            self.successResultOf(self.store.create_mailbox(name))
        for name in ("INBOX", "foo/bar", "foo/bar/baz", "top", "top/sub"):
            self.successResultOf(self.store.subscribe(name))

    def test_percent_returns_unsubscribed_parent_noselect(self) -> None:
        """
        RFC 3501 section 6.3.9: "foo/bar" subscribed but "foo" not: LSUB "%"
        returns foo flagged \\Noselect, not foo/bar; a subscribed parent is
        returned as it is.
        """
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b'l1 LSUB "" "%"\r\n')
        self.assertEqual(
            out,
            b'* LSUB () "/" INBOX\r\n'
            b'* LSUB (\\Noselect) "/" foo\r\n'
            b'* LSUB () "/" top\r\n'
            b"l1 OK LSUB completed\r\n",
        )
        out = self.send(proto, transport, b'l2 LSUB "foo/" "%"\r\n')
        self.assertEqual(out, b'* LSUB () "/" foo/bar\r\nl2 OK LSUB completed\r\n')
        out = self.send(proto, transport, b'l3 LSUB "" "*"\r\n')
        self.assertEqual(
            out,
            b'* LSUB () "/" INBOX\r\n'
            b'* LSUB () "/" foo/bar\r\n'
            b'* LSUB () "/" foo/bar/baz\r\n'
            b'* LSUB () "/" top\r\n'
            b'* LSUB () "/" top/sub\r\n'
            b"l3 OK LSUB completed\r\n",
        )


class SearchAddressTests(ServerTestCase):
    def test_address_of_the_envelope(self) -> None:
        """
        RFC 3501 section 6.4.4: FROM, TO, CC and BCC match the address
        fields of the envelope structure, so an address written with comments
        inside it is found as ``mailbox@host``; the field as written (the
        display name) still matches as a case-insensitive substring.
        """
        message = (
            b"From: <user-from (comment)@ (comment) domain.org>\r\n"
            b'To: "Carol Q" <carol (x) @ example.net>\r\n'
            b"Cc: team: dave@ (y) example.com;\r\n"
            b"Bcc: erin@example.org\r\n"
            b"Subject: comments\r\n\r\nbody\r\n"
        )
        self.successResultOf(self.mailbox.append(message, (), 1_600_000_000))
        proto, transport = self.login()
        for key, expected in (
            (b"FROM user-from@domain.org", b"3"),
            (b"FROM USER-FROM@Domain.Org", b"3"),
            (b"FROM from@domain", b"3"),
            (b"FROM comment", b"3"),
            (b"FROM bob@example.test", b"1"),
            (b"TO carol@example.net", b"3"),
            (b'TO "carol q"', b"3"),
            (b"CC dave@example.com", b"3"),
            (b"BCC erin@example.org", b"3"),
            (b"FROM nobody@domain.org", b""),
            (b"CC carol@example.net", b""),
        ):
            out = self.send(proto, transport, b"s1 SEARCH " + key + b"\r\n")
            self.assertEqual(
                out,
                b"* SEARCH" + (b" " + expected if expected else b"") + b"\r\ns1 OK SEARCH completed\r\n",
                key,
            )


_SYSTEM = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft"


class KeywordFlagsTests(ServerTestCase):
    """FLAGS and PERMANENTFLAGS list the keywords in use (RFC 3501 sections 6.3.1, 7.2.6)."""

    def flags_lines(self, keywords: bytes) -> bytes:
        return (
            b"* FLAGS (" + _SYSTEM + keywords + b")\r\n"
            b"* OK [PERMANENTFLAGS (" + _SYSTEM + keywords + b" \\*)] Flags permitted\r\n"
        )

    def test_select_lists_keywords_in_use(self) -> None:
        """RFC 3501 section 6.3.1: SELECT's FLAGS and PERMANENTFLAGS hold the mailbox's keywords."""
        self.successResultOf(self.mailbox.set_flags([self.uids[0]], {"$Label1", "Work"}, FlagMode.ADD))
        proto, transport = self.connect()
        self.send(proto, transport, LOGIN)
        out = self.send(proto, transport, b"s1 SELECT INBOX\r\n")
        self.assertTrue(out.startswith(self.flags_lines(b" $Label1 Work")), out)
        out = self.send(proto, transport, b"s2 EXAMINE INBOX\r\n")
        self.assertTrue(
            out.startswith(
                b"* OK [CLOSED] Previous mailbox closed\r\n"  # RFC 7162 section 3.2.11
                b"* FLAGS (" + _SYSTEM + b" $Label1 Work)\r\n* OK [PERMANENTFLAGS ()] Flags permitted\r\n"
            ),
            out,
        )

    def test_store_of_a_new_keyword(self) -> None:
        """RFC 3501 section 7.2.6: an untagged FLAGS (and PERMANENTFLAGS) before the FETCH showing a new keyword."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"t1 STORE 1 +FLAGS ($Todo)\r\n")
        self.assertEqual(
            out,
            self.flags_lines(b" $Todo") + b"* 1 FETCH (FLAGS ($Todo \\Recent))\r\nt1 OK STORE completed\r\n",
        )
        # Known now: no FLAGS again, nor for a removal.
        out = self.send(proto, transport, b"t2 STORE 2 +FLAGS.SILENT ($Todo)\r\n")
        self.assertEqual(out, b"t2 OK STORE completed\r\n")
        out = self.send(proto, transport, b"t3 STORE 2 -FLAGS.SILENT (Other)\r\n")
        self.assertEqual(out, b"t3 OK STORE completed\r\n")

    def test_keyword_from_another_session(self) -> None:
        """RFC 3501 section 7.2.6: a keyword set elsewhere is announced with FLAGS before its FETCH."""
        proto, transport = self.login()
        self.successResultOf(self.mailbox.set_flags([self.uids[1]], {"Urgent"}, FlagMode.ADD))
        out = self.send(proto, transport, b"n1 NOOP\r\n")
        self.assertEqual(
            out,
            self.flags_lines(b" Urgent") + b"* 2 FETCH (FLAGS (Urgent \\Recent))\r\nn1 OK NOOP completed\r\n",
        )

    def test_new_message_with_new_keyword(self) -> None:
        """RFC 3501 section 7.2.6: a message arriving with a new keyword brings a FLAGS response."""
        proto, transport = self.login()
        self.successResultOf(self.mailbox.append(b"Subject: k\r\n\r\nk\r\n", ("$Forwarded",), 1_600_000_000))
        out = self.send(proto, transport, b"n1 NOOP\r\n")
        self.assertEqual(
            out, self.flags_lines(b" $Forwarded") + b"* 3 EXISTS\r\n* 3 RECENT\r\nn1 OK NOOP completed\r\n"
        )
