"""
SORT and THREAD (RFC 5256), SORT=DISPLAY (RFC 5957) and ESORT (RFC 5267
section 3): the parser, the renderers, and the commands through the
adapter on StringTransport (see tests/imap/test_server.py).
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_server import ServerTestCase
from tests.store.test_columns import generated_messages
from txmail import mime
from txmail.imap.columns import ColumnHeaders
from txmail.imap.commands import COMMANDS, capabilities, sort
from txmail.imap.commands.sort import DateFacts, FactsCache, MessageFacts, message_facts, sort_facts
from txmail.imap.fragment import LineFragment
from txmail.imap.parser import ParseError, parse_command
from txmail.imap.serialize import esort_response, sort_response, thread_response
from txmail.imap.types import SearchAnd, SearchKey, Sort, Thread
from txmail.interfaces import HEADER_COLUMNS
from txmail.model import MessageInfo, MessageMetadata

__all__: list[str] = []


def parse(line: bytes):  # type: ignore[no-untyped-def]
    return parse_command([LineFragment(line)])


class ParserTests(SynchronousTestCase):
    def test_sort(self) -> None:
        """RFC 5256 section 4: sort-criteria, search-charset, search keys."""
        cmd = parse(b"a1 SORT (REVERSE date Subject) UTF-8 SINCE 1-Feb-1994 FROM x")
        self.assertEqual(cmd.name, "SORT")
        args = cmd.args
        assert isinstance(args, Sort)
        self.assertEqual(args.criteria, (("DATE", True), ("SUBJECT", False)))
        self.assertEqual(args.charset, "UTF-8")
        self.assertIsInstance(args.key, SearchAnd)
        self.assertFalse(args.uid)
        self.assertIsNone(args.return_options)

    def test_uid_sort_display_and_return(self) -> None:
        """RFC 5957 section 4 (DISPLAYFROM/DISPLAYTO), RFC 5267 section 3.2 (RETURN)."""
        args = parse(b"a1 UID SORT RETURN (MIN COUNT) (DISPLAYFROM REVERSE DISPLAYTO) US-ASCII ALL").args
        assert isinstance(args, Sort)
        self.assertTrue(args.uid)
        self.assertEqual(args.criteria, (("DISPLAYFROM", False), ("DISPLAYTO", True)))
        self.assertEqual(args.return_options, ("MIN", "COUNT"))
        self.assertEqual(args.key, SearchKey("ALL"))
        args = parse(b"a1 SORT RETURN () (ARRIVAL) UTF-8 ALL").args
        assert isinstance(args, Sort)
        self.assertEqual(args.return_options, ())

    def test_sort_errors(self) -> None:
        for line in (
            b"a1 SORT (ARRIVAL) ALL",  # no charset
            b"a1 SORT (ARRIVAL) UTF-8",  # no search key
            b"a1 SORT () UTF-8 ALL",  # no criterion
            b"a1 SORT (REVERSE) UTF-8 ALL",
            b"a1 SORT (COLOR) UTF-8 ALL",
            b"a1 SORT ARRIVAL UTF-8 ALL",
            b"a1 SORT RETURN (PARTIAL 1:10 ALL) (ARRIVAL) UTF-8 ALL",  # RFC 5267 section 4.4
            b"a1 SORT RETURN (COLOR) (ARRIVAL) UTF-8 ALL",
        ):
            self.assertRaises(ParseError, parse, line)

    def test_thread(self) -> None:
        cmd = parse(b"a1 UID THREAD references UTF-8 UNSEEN")
        self.assertEqual(cmd.name, "THREAD")
        self.assertEqual(cmd.args, Thread("REFERENCES", "UTF-8", SearchKey("UNSEEN"), True))
        self.assertRaises(ParseError, parse, b"a1 THREAD REFERENCES UTF-8")
        self.assertRaises(ParseError, parse, b"a1 THREAD REFERENCES")


class RenderTests(SynchronousTestCase):
    def test_sort(self) -> None:
        self.assertEqual(sort_response([5, 3, 4]), b"* SORT 5 3 4\r\n")
        self.assertEqual(sort_response([]), b"* SORT\r\n")

    def test_thread_rfc_example(self) -> None:
        """RFC 5256 section 4, the example THREAD response."""
        threads = [
            (2, ()),
            (3, ((6, ((4, ((23, ()),)), (44, ((7, ((96, ()),)),)))),)),
        ]
        self.assertEqual(thread_response(threads), b"* THREAD (2)(3 6 (4 23)(44 7 96))\r\n")

    def test_thread_dummy_root(self) -> None:
        """A dummy parent is a thread list without a number (RFC 5256 section 4: "((3)(5))")."""
        self.assertEqual(thread_response([(None, ((3, ()), (5, ())))]), b"* THREAD ((3)(5))\r\n")

    def test_esort(self) -> None:
        """RFC 5267 section 3.2: MIN/MAX follow the sort order, ALL keeps it."""
        self.assertEqual(
            esort_response("t", True, [5, 3, 4, 5, 7, 1], ["ALL", "MIN", "MAX", "COUNT"]),
            b'* ESEARCH (TAG "t") UID MIN 5 MAX 1 ALL 5,3:5,7,1 COUNT 6\r\n',
        )
        self.assertEqual(
            esort_response("t", False, [], ["MIN", "ALL", "COUNT"]), b'* ESEARCH (TAG "t") COUNT 0\r\n'
        )
        self.assertEqual(esort_response("t", False, [2, 1], []), b'* ESEARCH (TAG "t") ALL 2,1\r\n')


class CapabilityTests(SynchronousTestCase):
    def test_advertised(self) -> None:
        """Each capability once, in the order of the module (RFC 5256, 5957, 5267 ESORT)."""
        caps = capabilities()
        wanted = ["SORT", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "SORT=DISPLAY", "ESORT"]
        self.assertEqual([c for c in caps if c in wanted], wanted)
        self.assertEqual([c for c in caps if c.startswith("CONTEXT=")], ["CONTEXT=SEARCH", "CONTEXT=SORT"])
        self.assertEqual(COMMANDS["SORT"].capability, "SORT")


MESSAGES = [
    # 3
    b"Subject: Re: hello\r\nFrom: Zed <zed@x.test>\r\nTo: b@y.test\r\nCc: =?utf-8?q?Z?= <z@y.test>\r\n"
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <b@x>\r\nReferences: <a@x>\r\n\r\nreply\r\n",
    # 4
    b"Subject: hello\r\nFrom: =?utf-8?q?Andr=C3=A9?= <b@x.test>\r\nTo: Yves <a@y.test>\r\n"
    b"Date: Mon, 7 Feb 1994 20:52:25 -0800\r\nMessage-ID: <a@x>\r\n\r\nfirst\r\n",
    # 5
    b"Subject: [list] Fwd: ONE\r\nFrom: amy@x.test\r\nCc: a@y.test\r\nDate: bogus\r\n\r\nforwarded, longer body\r\n",
]


class SortCommandTests(ServerTestCase):
    """
    Messages 1 ("one", from bob, no Date) and 2 ("two", no From) of
    test_server, 3-5 above; the internal dates of 1-2 are 1,600,000,000,
    of 3-5 1,600,000,100 to 1,600,000,300.
    """

    def setUp(self) -> None:
        super().setUp()
        for i, m in enumerate(MESSAGES, 1):
            self.successResultOf(self.mailbox.append(m, (), 1_600_000_000 + 100 * i))
        self.proto, self.transport = self.login()

    def cmd(self, line: bytes) -> bytes:
        return self.send(self.proto, self.transport, line + b"\r\n")

    def test_arrival_and_size(self) -> None:
        """RFC 5256 section 3: ARRIVAL (internal date), SIZE; ties in mailbox order."""
        self.assertEqual(
            self.cmd(b"s SORT (ARRIVAL) UTF-8 ALL"), b"* SORT 1 2 3 4 5\r\ns OK SORT completed\r\n"
        )
        self.assertEqual(
            self.cmd(b"s SORT (REVERSE ARRIVAL) UTF-8 ALL"), b"* SORT 5 4 3 1 2\r\ns OK SORT completed\r\n"
        )
        sizes = sorted(range(1, 6), key=lambda n: len(([*MESSAGES_1_2, *MESSAGES])[n - 1]))
        expected = b"* SORT " + b" ".join(b"%d" % n for n in sizes) + b"\r\ns OK SORT completed\r\n"
        self.assertEqual(self.cmd(b"s SORT (SIZE) UTF-8 ALL"), expected)

    def test_date(self) -> None:
        """RFC 5256 section 2.2: sent date in UTC, the internal date without a valid Date:."""
        self.assertEqual(self.cmd(b"s SORT (DATE) UTF-8 ALL"), b"* SORT 4 3 1 2 5\r\ns OK SORT completed\r\n")
        self.assertEqual(
            self.cmd(b"s SORT (REVERSE DATE) UTF-8 ALL"), b"* SORT 5 1 2 3 4\r\ns OK SORT completed\r\n"
        )

    def test_subject(self) -> None:
        """RFC 5256 section 2.1: base subjects, i;ascii-casemap ("ONE" is "one")."""
        self.assertEqual(
            self.cmd(b"s SORT (SUBJECT) UTF-8 ALL"), b"* SORT 3 4 1 5 2\r\ns OK SORT completed\r\n"
        )
        self.assertEqual(
            self.cmd(b"s SORT (SUBJECT REVERSE DATE) UTF-8 ALL"),
            b"* SORT 3 4 5 1 2\r\ns OK SORT completed\r\n",
        )

    def test_addresses(self) -> None:
        """RFC 5256 section 3: the mailbox part of the first address; none sorts first."""
        self.assertEqual(self.cmd(b"s SORT (FROM) UTF-8 ALL"), b"* SORT 2 5 4 1 3\r\ns OK SORT completed\r\n")
        self.assertEqual(self.cmd(b"s SORT (TO) UTF-8 ALL"), b"* SORT 1 2 5 4 3\r\ns OK SORT completed\r\n")
        self.assertEqual(
            self.cmd(b"s SORT (CC ARRIVAL) UTF-8 ALL"), b"* SORT 1 2 4 5 3\r\ns OK SORT completed\r\n"
        )

    def test_display(self) -> None:
        """RFC 5957 section 3: the decoded display name, else mailbox@host."""
        # "" (2), "amy@x.test" (5), "André" (4), "bob@example.test" (1), "Zed" (3)
        self.assertEqual(
            self.cmd(b"s SORT (DISPLAYFROM) UTF-8 ALL"), b"* SORT 2 5 4 1 3\r\ns OK SORT completed\r\n"
        )
        # "" (1, 2, 5), "b@y.test" (3), "Yves" (4)
        self.assertEqual(
            self.cmd(b"s SORT (DISPLAYTO) UTF-8 ALL"), b"* SORT 1 2 5 3 4\r\ns OK SORT completed\r\n"
        )

    def test_search_key_and_uid(self) -> None:
        """RFC 5256 section 4: only matching messages; UID SORT answers UIDs."""
        self.assertEqual(
            self.cmd(b"s SORT (SUBJECT) UTF-8 OR FROM zed TO yves"), b"* SORT 3 4\r\ns OK SORT completed\r\n"
        )
        self.cmd(b"e STORE 1 +FLAGS (\\Deleted)")
        self.cmd(b"e EXPUNGE")
        self.assertEqual(
            self.cmd(b"s UID SORT (REVERSE ARRIVAL) US-ASCII ALL"),
            b"* SORT 5 4 3 2\r\ns OK UID SORT completed\r\n",
        )
        self.assertEqual(
            self.cmd(b"s SORT (ARRIVAL) UTF-8 SUBJECT nothing"), b"* SORT\r\ns OK SORT completed\r\n"
        )

    def test_charset(self) -> None:
        """RFC 5256 section 4: an unsupported charset is NO [BADCHARSET]."""
        out = self.cmd(b"s SORT (ARRIVAL) KOI8-R ALL")
        self.assertEqual(out, b"s NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n")
        out = self.cmd(b"s THREAD REFERENCES KOI8-R ALL")
        self.assertEqual(out, b"s NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n")

    def test_not_selected(self) -> None:
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"s SORT (ARRIVAL) UTF-8 ALL\r\n")
        self.assertTrue(out.startswith(b"s BAD "), out)

    def test_esort(self) -> None:
        """RFC 5267 section 3.2: SORT RETURN gives an ESEARCH response in the sort order."""
        self.assertEqual(
            self.cmd(b"s SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL"),
            b'* ESEARCH (TAG "s") MIN 4 MAX 5 COUNT 5\r\ns OK SORT completed\r\n',
        )
        self.assertEqual(
            self.cmd(b"s UID SORT RETURN () (DATE) UTF-8 ALL"),
            b'* ESEARCH (TAG "s") UID ALL 4,3,1:2,5\r\ns OK UID SORT completed\r\n',
        )
        self.assertEqual(
            self.cmd(b"s SORT RETURN (MIN COUNT) (DATE) UTF-8 SUBJECT nothing"),
            b'* ESEARCH (TAG "s") COUNT 0\r\ns OK SORT completed\r\n',
        )

    def test_thread_references(self) -> None:
        """
        RFC 5256 section 3: 3 replies to 4 (References); 5 ("[list] Fwd:
        ONE") is a forward of 1 ("one") by subject (step 5); by date.
        """
        self.assertEqual(
            self.cmd(b"t THREAD REFERENCES UTF-8 ALL"), b"* THREAD (4 3)(1 5)(2)\r\nt OK THREAD completed\r\n"
        )
        self.assertEqual(
            self.cmd(b"t UID THREAD REFERENCES UTF-8 NOT SUBJECT hello"),
            b"* THREAD (1 5)(2)\r\nt OK UID THREAD completed\r\n",
        )

    def test_thread_ordered_subject(self) -> None:
        self.assertEqual(
            self.cmd(b"t THREAD ORDEREDSUBJECT UTF-8 ALL"),
            b"* THREAD (4 3)(1 5)(2)\r\nt OK THREAD completed\r\n",
        )

    def test_date_first_then_subject_and_thread(self) -> None:
        """
        A first SORT (DATE) keeps the sort keys (and the raw fields of the
        ids); a SORT (SUBJECT) or THREAD after it answers the same.
        """
        self.assertEqual(self.cmd(b"s SORT (DATE) UTF-8 ALL"), b"* SORT 4 3 1 2 5\r\ns OK SORT completed\r\n")
        self.assertEqual(
            self.cmd(b"s SORT (SUBJECT) UTF-8 ALL"), b"* SORT 3 4 1 5 2\r\ns OK SORT completed\r\n"
        )
        self.assertEqual(
            self.cmd(b"s SORT (REVERSE DATE) UTF-8 ALL"), b"* SORT 5 1 2 3 4\r\ns OK SORT completed\r\n"
        )
        self.assertEqual(
            self.cmd(b"t THREAD REFERENCES UTF-8 ALL"), b"* THREAD (4 3)(1 5)(2)\r\nt OK THREAD completed\r\n"
        )

    def test_thread_unknown_algorithm(self) -> None:
        self.assertEqual(self.cmd(b"t THREAD XYZ UTF-8 ALL"), b"t BAD Unknown threading algorithm\r\n")


# The two messages of test_server's setUp.
from tests.imap.test_server import MESSAGES as MESSAGES_1_2  # noqa: E402


class _Box:
    """A mailbox as the facts cache sees it."""

    def __init__(self, uidvalidity: int = 1) -> None:
        self.uidvalidity = uidvalidity


def _counting_metadata_reads() -> tuple[ServerTestCase, list[list[int]]]:
    """A set-up server test case whose mailbox records the UIDs of each ``get_metadata`` call."""
    store = ServerTestCase("run")
    store.setUp()
    mailbox = store.mailbox
    asked: list[list[int]] = []
    original = mailbox.get_metadata

    def get_metadata(uids: list[int]) -> object:
        asked.append(list(uids))
        return original(uids)

    mailbox.get_metadata = get_metadata  # type: ignore[method-assign]
    store.addCleanup(store.tearDown)
    return store, asked


class FactsCacheTests(SynchronousTestCase):
    def facts(self, n: int) -> MessageFacts:
        return MessageFacts(float(n), b"S", False, None, ())

    def test_kept_per_mailbox_and_uidvalidity(self) -> None:
        cache = FactsCache()
        box = _Box()
        cache.table(box, [1])[1] = self.facts(1)
        self.assertEqual(cache.table(box, [1]), {1: self.facts(1)})
        self.assertEqual(cache.table(_Box(), [1]), {})
        box.uidvalidity = 2  # RFC 3501 section 2.3.1.1: the UIDs name other messages now
        self.assertEqual(cache.table(box, [1]), {})

    def test_expunged_trimmed(self) -> None:
        cache = FactsCache()
        box = _Box()
        table = cache.table(box, range(1, 3001))
        table.update({n: self.facts(n) for n in range(1, 3001)})
        self.assertEqual(set(cache.table(box, [5, 6])), {5, 6})

    def test_least_recently_used_forgotten(self) -> None:
        cache = FactsCache(limit=10)
        a, b, c = _Box(), _Box(), _Box()
        cache.table(a, []).update({n: self.facts(n) for n in range(6)})
        cache.table(b, []).update({n: self.facts(n) for n in range(6)})
        self.assertEqual(len(cache.table(c, [])), 0)  # a (12 > 10) is forgotten
        self.assertEqual(len(cache.table(b, [])), 6)
        self.assertEqual(len(cache.table(a, [])), 0)

    def test_sort_facts_completed(self) -> None:
        """SortFacts keep the raw fields the message ids come from: the same facts either way."""
        info = MessageInfo(uid=1, flags=frozenset(), size=10, internal_date=1_600_000_000, modseq=1)
        md = MessageMetadata(
            0,
            (
                ("Received", " from x; Mon, 1 Jan 2001 00:00:00 +0000\r\n"),
                ("SUBJECT ", " Re: [list] Hello\r\n"),
                ("date", " Tue, 2 Jan 2001 10:00:00 +0100\r\n"),
                ("Message-Id", " <m@x>\r\n"),
                ("In-Reply-To", " <p@x>\r\n"),
                ("Date", " Wed, 3 Jan 2001 10:00:00 +0100\r\n"),
            ),
            (),
            (),
        )
        date = sort_facts(info, md)
        self.assertEqual(date.date, 978426000.0)  # the first Date: field
        facts = date.complete()
        self.assertEqual(facts, message_facts(info, md))
        self.assertEqual(facts, MessageFacts(978426000.0, b"HELLO", True, "m@x", ("p@x",)))
        self.assertEqual(
            sort_facts(info, None).complete(), MessageFacts(1_600_000_000.0, b"", False, None, ())
        )

    def test_date_facts_from_columns(self) -> None:
        """
        The facts of SORT (DATE) from the header columns (the date alone,
        completed later) equal those of the metadata, at every level, on
        messages with encoded, folded, repeated and missing fields.
        """
        for n, body in enumerate(generated_messages(200, seed=3), 1):
            info = MessageInfo(
                uid=n, flags=frozenset(), size=len(body), internal_date=1_600_000_000 + n, modseq=1
            )
            md = mime.parse_metadata(body)
            columns = mime.header_columns(md.headers, HEADER_COLUMNS)
            expected = message_facts(info, md)
            for md_form in (columns, ColumnHeaders(columns)):
                date = sort._new_facts(sort.DATE_FACTS, info, md_form)
                self.assertIsInstance(date, DateFacts)
                self.assertEqual(date.date, expected.date, body)
                self.assertEqual(date.sort_facts(), sort_facts(info, md), body)
                self.assertEqual(date.complete(), expected, body)
                self.assertEqual(sort._new_facts(sort.SORT_FACTS, info, md_form), sort_facts(info, md), body)
                self.assertEqual(sort._new_facts(sort.ALL_FACTS, info, md_form), expected, body)
            # The metadata path is unchanged: the sort keys computed at once.
            self.assertEqual(sort._new_facts(sort.DATE_FACTS, info, md), sort_facts(info, md))

    def test_column_date_first_date_field(self) -> None:
        """The first Date field of the columns, a value spelt "date" skipped, else the internal date."""
        info = MessageInfo(uid=1, flags=frozenset(), size=10, internal_date=1_600_000_000, modseq=1)
        first, second = " Tue, 2 Jan 2001 10:00:00 +0100\r\n", " Wed, 3 Jan 2001 10:00:00 +0100\r\n"
        cases = {
            ("subject", "date", "date", first, "date", second): 978426000.0,
            ("date", first, "date", second): 978426000.0,
            ("subject", "date", "from", "date"): 1_600_000_000.0,
            ("subject", "date"): 1_600_000_000.0,
            ("date", " garbage\r\n", "date", first): 1_600_000_000.0,
            (): 1_600_000_000.0,
        }
        for columns, expected in cases.items():
            self.assertEqual(sort._column_date(info, columns), expected, columns)
        # Against the general walk of the fields, on generated tuples.
        rng = random.Random(9)
        names = ("subject", "date", "from", "message-id")
        values = ("date", "subject", first, second, " x\r\n", "")
        for _ in range(500):
            columns = tuple(
                x for _ in range(rng.randint(0, 5)) for x in (rng.choice(names), rng.choice(values))
            )
            fields = sort._fields(ColumnHeaders(columns))
            self.assertEqual(sort._column_date(info, columns), sort._date(info, fields.get("date")), columns)
            self.assertEqual(sort._column_fields(columns), fields, columns)

    def test_first_date_sort_then_thread_reads_metadata_once(self) -> None:
        """A SORT (DATE) first keeps what a THREAD after it needs: no metadata read again."""
        store, asked = _counting_metadata_reads()
        proto, transport = store.login()
        out = store.send(proto, transport, b"s SORT (DATE) UTF-8 ALL\r\n")
        self.assertTrue(out.endswith(b"s OK SORT completed\r\n"), out)
        self.assertEqual(asked, [[1, 2]])
        out = store.send(proto, transport, b"t THREAD REFERENCES UTF-8 ALL\r\n")
        self.assertTrue(out.endswith(b"t OK THREAD completed\r\n"), out)
        out = store.send(proto, transport, b"s SORT (SUBJECT) UTF-8 ALL\r\n")
        self.assertTrue(out.endswith(b"s OK SORT completed\r\n"), out)
        self.assertEqual(asked, [[1, 2]])

    def test_second_sort_reads_no_metadata(self) -> None:
        """A SORT (DATE) after a THREAD of the same mailbox takes the cached facts."""
        store, asked = _counting_metadata_reads()
        proto, transport = store.login()
        out = store.send(proto, transport, b"t THREAD REFERENCES UTF-8 ALL\r\n")
        self.assertTrue(out.endswith(b"t OK THREAD completed\r\n"), out)
        self.assertEqual(asked, [[1, 2]])
        out = store.send(proto, transport, b"s SORT (REVERSE DATE SUBJECT) UTF-8 ALL\r\n")
        self.assertEqual(out, b"* SORT 1 2\r\ns OK SORT completed\r\n")
        self.assertEqual(asked, [[1, 2]])
        out = store.send(proto, transport, b"s SORT (FROM) UTF-8 ALL\r\n")  # the envelope: metadata
        self.assertEqual(asked, [[1, 2], [1, 2]])
