"""
End to end: CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 section 4) on the
real service (Maildir store) through the stdlib's imaplib: PARTIAL, and
the ADDTO/REMOVEFROM updates one session hears of another's changes.
"""

from __future__ import annotations

import imaplib
import re
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.e2e import test_imap

__all__: list[str] = []

MESSAGES = [
    b"From: bob@x.test\r\nSubject: beta\r\n\r\none\r\n",
    b"From: carol@x.test\r\nSubject: alpha\r\n\r\ntwo\r\n",
    b"From: Bob <bob@x.test>\r\nSubject: gamma\r\n\r\nthree\r\n",
]


def command(client: imaplib.IMAP4, name: str, *args: str) -> tuple[str, list[bytes]]:
    """Run *name* (``UID`` with its command as first argument); its tag and the ESEARCH responses it had."""
    test_imap.ok(client._simple_command(name, *args))  # type: ignore[attr-defined]
    _, data = client.response("ESEARCH")
    found = [d for d in data if d is not None]
    match = re.match(rb'\(TAG "([^"]+)"\)', found[-1])
    assert match is not None, found
    return match.group(1).decode("ascii"), found


def updates(client: imaplib.IMAP4, *tags: str) -> dict[str, list[bytes]]:
    """
    NOOP until an ESEARCH update of each of *tags* came (the store's reads
    may take a moment; 2 seconds at most): each tag's updates, the tag left out.
    """
    found: dict[str, list[bytes]] = {}
    for _ in range(40):
        test_imap.ok(client.noop())
        _, data = client.response("ESEARCH")
        for d in data:
            match = re.match(rb'\(TAG "([^"]+)"\) ', d or b"")
            if match is not None:
                found.setdefault(match.group(1).decode("ascii"), []).append(d[match.end() :])
        if all(tag in found for tag in tags):
            break
        time.sleep(0.05)
    return found


class ContextE2ETests(test_imap.IMAPTestCase):
    @defer.inlineCallbacks
    def test_updates_between_sessions(self) -> Any:
        """Sections 4.3 and 4.4: one session's flag change and append reach the other's contexts."""

        def run() -> dict[str, Any]:
            a = self.login()
            for i, body in enumerate(MESSAGES):
                test_imap.ok(a.append("INBOX", None, imaplib.Time2Internaldate(1_700_000_000 + i), body))
            test_imap.ok(a.select("INBOX"))
            uids = test_imap.ok(a.uid("SEARCH", "ALL"))[0].split()
            out: dict[str, Any] = {"caps": a.capabilities, "uids": [int(u) for u in uids]}
            search, out["search"] = command(
                a, "UID", "SEARCH", "RETURN", "(UPDATE COUNT)", "UNSEEN", "FROM", "bob"
            )
            sort, out["sort"] = command(
                a, "SORT", "RETURN", "(UPDATE PARTIAL 1:2)", "(SUBJECT)", "UTF-8", "UNSEEN"
            )
            _, out["partial"] = command(a, "UID", "SEARCH", "RETURN", "(PARTIAL 3:9)", "ALL")
            b = self.login()
            test_imap.ok(b.select("INBOX"))
            test_imap.ok(b.uid("STORE", uids[0].decode(), "+FLAGS", "(\\Seen)"))
            out["seen"] = updates(a, search, sort)
            test_imap.ok(
                b.append("INBOX", None, None, b"From: bob@x.test\r\nSubject: aardvark\r\n\r\nnew\r\n")
            )
            out["new"] = updates(a, search, sort)
            out["new_uid"] = int(test_imap.ok(b.uid("SEARCH", "SUBJECT", "aardvark"))[0])
            out["search_tag"], out["sort_tag"] = search, sort
            test_imap.ok(a.xatom("CANCELUPDATE", f'"{search}"'))
            test_imap.ok(b.uid("STORE", str(out["new_uid"]), "+FLAGS", "(\\Seen)"))
            out["cancelled"] = updates(a, sort)
            return out

        got = yield deferToThread(run)
        self.assertIn("CONTEXT=SEARCH", got["caps"])
        self.assertIn("CONTEXT=SORT", got["caps"])
        one, _, three = got["uids"]
        new = got["new_uid"]
        tag_of = re.compile(rb'^\(TAG "[^"]+"\) ')
        self.assertEqual([tag_of.sub(b"", d) for d in got["search"]], [b"UID COUNT 2"])
        # alpha (2), beta (1), gamma (3): the first two.
        self.assertEqual([tag_of.sub(b"", d) for d in got["sort"]], [b"PARTIAL (1:2 2,1)"])
        self.assertEqual([tag_of.sub(b"", d) for d in got["partial"]], [b"UID PARTIAL (3:9 %d)" % three])
        search, sort = got["search_tag"], got["sort_tag"]
        self.assertEqual(got["seen"], {search: [b"UID REMOVEFROM (0 %d)" % one], sort: [b"REMOVEFROM (2 1)"]})
        # aardvark (4) first; the SEARCH context has it by UID.
        self.assertEqual(got["new"], {search: [b"UID ADDTO (0 %d)" % new], sort: [b"ADDTO (1 4)"]})
        # CANCELUPDATE: the SEARCH context is told nothing more.
        self.assertEqual(got["cancelled"], {sort: [b"REMOVEFROM (1 4)"]})

    @defer.inlineCallbacks
    def test_idle_and_expunge(self) -> Any:
        """
        Section 4.3.2: an idling session hears ADDTO after EXISTS (a search
        that reads the metadata, in the store's threads) and REMOVEFROM
        before EXPUNGE.
        """
        login = b'LOGIN "%s" "%s"' % (test_imap.USER.encode(), test_imap.PASSWORD.encode())

        def run() -> dict[str, Any]:
            b = self.login()
            test_imap.ok(b.append("INBOX", None, None, MESSAGES[0]))
            raw = test_imap.RawClient(self.server.address("imap"))
            try:
                raw.command(b"l1", login)
                raw.command(b"s1", b"SELECT INBOX")
                out = {"search": raw.command(b"u1", b"SEARCH RETURN (UPDATE) FROM bob")}
                raw.send(b"i1 IDLE\r\n")
                raw.until(b"+ ")
                test_imap.ok(b.append("INBOX", None, None, MESSAGES[2]))
                out["added"] = raw.until(b"* ESEARCH")
                test_imap.ok(b.select("INBOX"))
                test_imap.ok(b.store("1", "+FLAGS", "(\\Deleted)"))
                test_imap.ok(b.expunge())
                out["expunged"] = raw.until(b"* 1 EXPUNGE")
                raw.send(b"DONE\r\n")
                out["done"] = raw.until(b"i1 ")
                out["cancel"] = raw.command(b"c1", b'CANCELUPDATE "u1"')
            finally:
                raw.close()
            return out

        got = yield deferToThread(run)
        self.assertEqual(got["search"], [b'* ESEARCH (TAG "u1") ALL 1\r\n', b"u1 OK SEARCH completed\r\n"])
        added = got["added"]
        self.assertEqual(added[-1], b'* ESEARCH (TAG "u1") ADDTO (0 2)\r\n')
        self.assertIn(b"* 2 EXISTS\r\n", added)
        self.assertIn(b'* ESEARCH (TAG "u1") REMOVEFROM (0 1)\r\n', got["expunged"])
        self.assertLess(
            got["expunged"].index(b'* ESEARCH (TAG "u1") REMOVEFROM (0 1)\r\n'), len(got["expunged"]) - 1
        )
        self.assertEqual(got["done"][-1], b"i1 OK IDLE terminated\r\n")
        self.assertEqual(got["cancel"], [b"c1 OK Updates cancelled\r\n"])
