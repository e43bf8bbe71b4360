"""
SAVEDATE (RFC 8514): the parser's new syntax, FETCH and SEARCH on
:class:`txmail.model.MessageInfo`'s save date (and the answers for a store
that keeps none), the adapter on StringTransport (the setup of
tests/imap/test_server.py), and an end-to-end check with imaplib against
the real service on Maildir, restarted in between.
"""

from __future__ import annotations

import datetime
import imaplib
import os
import re
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e._server import IMAPRestartCase
from tests.imap.test_condstore import parse
from tests.imap.test_server import PASSWORD, USER, ServerTestCase
from txmail.imap import fetch, search, serialize
from txmail.imap.commands import capabilities
from txmail.imap.parser import ParseError
from txmail.imap.types import Fetch, FetchAttribute, Search, SearchKey
from txmail.model import MessageInfo

__all__: list[str] = []

#: Internal date 2020-09-13 12:26:40 UTC, saved 2023-11-14 22:13:20 UTC.
INFO = MessageInfo(4, frozenset(), 10, 1_600_000_000.0, 5, 1_700_000_000.0, "M1")
#: The same from a store that keeps no save date.
BARE = MessageInfo(4, frozenset(), 10, 1_600_000_000.0, 5)
SAVEDATE_RE = re.compile(rb'SAVEDATE "([^"]+)"')


def hits(key: bytes, info: MessageInfo = INFO) -> bool:
    args = parse(b"a SEARCH " + key).args
    assert isinstance(args, Search)
    return search.matches(args.key, search.SearchContext(max_seq=1, max_uid=4), 1, info)


class ParserTests(SynchronousTestCase):
    """The syntax of RFC 8514 section 5."""

    def test_fetch_item(self) -> None:
        """fetch-att =/ "SAVEDATE"."""
        args = parse(b"a FETCH 1 (SAVEDATE UID)").args
        assert isinstance(args, Fetch)
        self.assertEqual(args.items, (FetchAttribute("SAVEDATE"), FetchAttribute("UID")))

    def test_search_keys(self) -> None:
        """search-key =/ "SAVEDBEFORE" SP date / "SAVEDON" SP date / "SAVEDSINCE" SP date / "SAVEDATESUPPORTED"."""
        args = parse(
            b"a SEARCH SAVEDBEFORE 1-Feb-2024 SAVEDON 14-Nov-2023 SAVEDSINCE 1-Jan-2020 SAVEDATESUPPORTED"
        ).args
        assert isinstance(args, Search)
        self.assertEqual(
            args.key.keys,  # type: ignore[union-attr]
            (
                SearchKey("SAVEDBEFORE", (datetime.date(2024, 2, 1),)),
                SearchKey("SAVEDON", (datetime.date(2023, 11, 14),)),
                SearchKey("SAVEDSINCE", (datetime.date(2020, 1, 1),)),
                SearchKey("SAVEDATESUPPORTED"),
            ),
        )
        for bad in (
            b"a SEARCH SAVEDON",
            b"a SEARCH SAVEDON 32-Jan-2024",
            b"a SEARCH SAVEDBEFORE yesterday",
            b"a SEARCH SAVEDATESUPPORTED 1-Jan-2024",
        ):
            self.assertRaises(ParseError, parse, bad)


class RenderTests(SynchronousTestCase):
    def test_fetch(self) -> None:
        """RFC 8514 section 4.2: the save date as a date-time (UTC); NIL for a store without save dates."""
        items = (FetchAttribute("SAVEDATE"),)
        self.assertEqual(
            fetch.render_fetch(3, items, INFO), b'* 3 FETCH (SAVEDATE "14-Nov-2023 22:13:20 +0000")\r\n'
        )
        self.assertEqual(fetch.render_fetch(3, items, BARE), b"* 3 FETCH (SAVEDATE NIL)\r\n")
        self.assertFalse(fetch.fetch_needs(items).message or fetch.fetch_needs(items).metadata)

    def test_search_dates(self) -> None:
        """RFC 8514 section 4.3: the save date's date, disregarding time and timezone (UTC here)."""
        self.assertTrue(hits(b"SAVEDON 14-Nov-2023"))
        self.assertFalse(hits(b"SAVEDON 13-Sep-2020"))  # the internal date's day
        self.assertTrue(hits(b"SAVEDBEFORE 15-Nov-2023"))
        self.assertFalse(hits(b"SAVEDBEFORE 14-Nov-2023"))
        self.assertTrue(hits(b"SAVEDSINCE 14-Nov-2023"))
        self.assertFalse(hits(b"SAVEDSINCE 15-Nov-2023"))
        self.assertTrue(hits(b"SAVEDATESUPPORTED"))
        self.assertFalse(search.search_needs(parse(b"a SEARCH SAVEDON 1-Jan-2024").args.key).metadata)  # type: ignore[union-attr]

    def test_search_without_save_dates(self) -> None:
        """
        RFC 8514 section 4.3: without save dates the SAVED* keys use the
        internal date, and SAVEDATESUPPORTED matches nothing.
        """
        self.assertTrue(hits(b"SAVEDON 13-Sep-2020", BARE))
        self.assertFalse(hits(b"SAVEDON 14-Nov-2023", BARE))
        self.assertTrue(hits(b"SAVEDBEFORE 14-Sep-2020", BARE))
        self.assertFalse(hits(b"SAVEDATESUPPORTED", BARE))
        self.assertTrue(hits(b"NOT SAVEDATESUPPORTED", BARE))


class SaveDateServerTests(ServerTestCase):
    """Through the adapter, on the memory store (its messages appended with an internal date in 2020)."""

    def test_advertised(self) -> None:
        """RFC 8514 section 4.1: the SAVEDATE capability."""
        self.assertIn("SAVEDATE", capabilities())

    def test_fetch(self) -> None:
        """FETCH SAVEDATE: when the message was appended, not its internal date."""
        proto, transport = self.login()
        infos = self.successResultOf(self.mailbox.list_messages())
        out = self.send(proto, transport, b"f1 FETCH 1:2 (SAVEDATE INTERNALDATE)\r\n")
        for info in infos:
            saved = datetime.datetime.fromtimestamp(info.save_date, datetime.UTC)
            self.assertIn(b"SAVEDATE " + serialize.date_time(saved) + b" INTERNALDATE", out)
        self.assertEqual(len(SAVEDATE_RE.findall(out)), 2)
        self.assertIn(b'INTERNALDATE "13-Sep-2020 12:26:40 +0000"', out)

    def test_search(self) -> None:
        """SEARCH SAVEDON today finds both messages, SAVEDBEFORE today none; SAVEDATESUPPORTED all."""
        proto, transport = self.login()
        today = datetime.datetime.now(datetime.UTC)
        if today.hour == 23 and today.minute == 59:  # pragma: no cover - the date may turn during the test
            time.sleep(61)
            today = datetime.datetime.now(datetime.UTC)
        day = today.strftime("%d-%b-%Y").encode()
        out = self.send(proto, transport, b"s1 SEARCH SAVEDON %s\r\n" % day)
        self.assertEqual(out, b"* SEARCH 1 2\r\ns1 OK SEARCH completed\r\n")
        out = self.send(proto, transport, b"s2 SEARCH SAVEDBEFORE %s\r\n" % day)
        self.assertEqual(out, b"* SEARCH\r\ns2 OK SEARCH completed\r\n")
        out = self.send(proto, transport, b"s3 SEARCH SAVEDSINCE 1-Jan-2021 SAVEDATESUPPORTED\r\n")
        self.assertEqual(out, b"* SEARCH 1 2\r\ns3 OK SEARCH completed\r\n")
        out = self.send(proto, transport, b"s4 SEARCH ON 13-Sep-2020 NOT SAVEDON 13-Sep-2020\r\n")
        self.assertEqual(out, b"* SEARCH 1 2\r\ns4 OK SEARCH completed\r\n")
        out = self.send(proto, transport, b"s5 SEARCH SAVEDON 31-Feb-2024\r\n")
        self.assertTrue(out.startswith(b"s5 BAD "), out)

    def test_copy_gets_new_save_date(self) -> None:
        """RFC 8514 section 3: a copy is saved when it is copied; the original keeps its save date."""
        self.successResultOf(self.store.create_mailbox("Archive"))
        (first, _) = self.successResultOf(self.mailbox.list_messages())
        proto, transport = self.login()
        self.send(proto, transport, b"c1 COPY 1 Archive\r\n")
        archive = self.successResultOf(self.store.get_mailbox("Archive"))
        (copy,) = self.successResultOf(archive.list_messages())
        self.assertGreaterEqual(copy.save_date, first.save_date)
        self.assertEqual(copy.internal_date, first.internal_date)
        (again, _) = self.successResultOf(self.mailbox.list_messages())
        self.assertEqual(again.save_date, first.save_date)


class EndToEndTests(IMAPRestartCase):
    """imaplib against the real service on Maildir: the save date before and after a restart."""

    user = USER
    password = PASSWORD

    @defer.inlineCallbacks
    def test_savedate_across_restart(self) -> Any:
        """APPEND with an old internal date: SAVEDATE is today, the same after a restart; SEARCH finds it."""
        data_dir = os.path.abspath(self.mktemp())
        server = yield self.start(data_dir)

        def first() -> dict[str, Any]:
            c = self.client(server)
            try:
                caps = c.capabilities
                c.append(
                    "INBOX", "", imaplib.Time2Internaldate(1_000_000_000), b"Subject: old\r\n\r\nbody\r\n"
                )
                c.select("INBOX")
                fetched = c.fetch("1", "(SAVEDATE INTERNALDATE)")[1][0]
                return {"caps": caps, "fetched": fetched}
            finally:
                c.logout()

        one = yield deferToThread(first)
        self.assertIn("SAVEDATE", one["caps"])
        (saved,) = SAVEDATE_RE.findall(one["fetched"])
        when = datetime.datetime.strptime(saved.decode().strip(), "%d-%b-%Y %H:%M:%S %z")
        self.assertLess(abs(when.timestamp() - time.time()), 600)

        yield server.stopService()
        server2 = yield self.start(data_dir)

        def second() -> dict[str, Any]:
            c = self.client(server2)
            try:
                c.select("INBOX")
                fetched = c.fetch("1", "(SAVEDATE)")[1][0]
                day = when.strftime("%d-%b-%Y")
                found = c.search(None, "SAVEDON", day)[1][0]
                supported = c.search(None, "SAVEDATESUPPORTED")[1][0]
                return {"fetched": fetched, "found": found, "supported": supported}
            finally:
                c.logout()

        two = yield deferToThread(second)
        self.assertEqual(SAVEDATE_RE.findall(two["fetched"]), [saved])
        self.assertEqual(two["found"], b"1")
        self.assertEqual(two["supported"], b"1")
