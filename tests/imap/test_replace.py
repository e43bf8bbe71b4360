"""
REPLACE and UID REPLACE (RFC 8508) through the IMAP adapter, on the memory
store (:class:`tests.imap.test_server.ServerTestCase`).
"""

from __future__ import annotations

from typing import Any

from tests.imap.test_server import ServerTestCase
from txmail.errors import StoreError
from txmail.imap.commands import capabilities
from txmail.imap.fragment import LineFragment, LiteralFragment
from txmail.imap.parser import ParseError, parse_command
from txmail.imap.types import AppendMessage, Replace

__all__: list[str] = []

NEW = b"Subject: edited draft\r\n\r\nnew text\r\n"


class ParseTests(ServerTestCase):
    def test_replace(self) -> None:
        """RFC 8508 section 6: replace = "REPLACE" SP seq-number SP mailbox append-message; uid-replace."""
        cmd = parse_command(
            [LineFragment(b"a UID REPLACE 7 Drafts (\\Draft) "), LiteralFragment(NEW), LineFragment(b"")]
        )
        self.assertEqual(cmd.args, Replace(7, "Drafts", AppendMessage(("\\Draft",), None, NEW), True))
        for line in (b"a REPLACE 0 Drafts ", b"a REPLACE 1:2 Drafts ", b"a REPLACE * Drafts "):
            self.assertRaises(
                ParseError, parse_command, [LineFragment(line), LiteralFragment(NEW), LineFragment(b"")]
            )


class ReplaceTests(ServerTestCase):
    def stored_uids(self) -> list[int]:
        return [m.uid for m in self.successResultOf(self.mailbox.list_messages())]

    def test_advertised(self) -> None:
        """RFC 8508 section 2: the REPLACE capability."""
        self.assertIn("REPLACE", capabilities())

    def test_replace_in_selected(self) -> None:
        """
        RFC 8508 section 3.3: the new message is appended, the untagged OK
        [APPENDUID] comes before the EXPUNGE of the old one.
        """
        proto, transport = self.login()
        out = self.send(proto, transport, b"r1 REPLACE 1 INBOX (\\Seen) {%d+}\r\n%s\r\n" % (len(NEW), NEW))
        self.assertEqual(
            out,
            b"* OK [APPENDUID %d 3] Replacement message ready\r\n* 1 EXPUNGE\r\n* 2 EXISTS\r\n* 2 RECENT\r\n"
            b"r1 OK REPLACE completed\r\n" % self.mailbox.uidvalidity,
        )
        self.assertEqual(self.stored_uids(), [2, 3])
        self.assertEqual(self.successResultOf(self.mailbox.read_message(3)), NEW)
        self.assertIn("\\Seen", self.flags(3))

    def test_uid_replace_to_other(self) -> None:
        """RFC 8508 section 3.4: UID REPLACE into another mailbox; the old message leaves the selected one."""
        self.successResultOf(self.store.create_mailbox("Drafts"))
        drafts = self.successResultOf(self.store.get_mailbox("Drafts"))
        proto, transport = self.login()
        out = self.send(proto, transport, b"r1 UID REPLACE 2 Drafts {%d+}\r\n%s\r\n" % (len(NEW), NEW))
        self.assertEqual(
            out,
            b"* OK [APPENDUID %d 1] Replacement message ready\r\n* 2 EXPUNGE\r\nr1 OK UID REPLACE completed\r\n"
            % drafts.uidvalidity,
        )
        self.assertEqual(self.stored_uids(), [1])
        self.assertEqual(self.successResultOf(drafts.read_message(1)), NEW)

    def test_unknown_uid(self) -> None:
        """RFC 8508 section 3: UID REPLACE of a UID not in the mailbox is NO; nothing appended."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"r1 UID REPLACE 99 INBOX {%d+}\r\n%s\r\n" % (len(NEW), NEW))
        self.assertEqual(out, b"r1 NO [NONEXISTENT] No such message\r\n")
        out = self.send(proto, transport, b"r2 REPLACE 9 INBOX {%d+}\r\n%s\r\n" % (len(NEW), NEW))
        self.assertTrue(out.startswith(b"r2 BAD "), out)
        self.assertEqual(self.stored_uids(), [1, 2])

    def test_read_only(self) -> None:
        """RFC 8508 section 3: the old message cannot be expunged from an EXAMINEd mailbox: NO."""
        proto, transport = self.login(select=None)
        self.send(proto, transport, b"e1 EXAMINE INBOX\r\n")
        out = self.send(proto, transport, b"r1 REPLACE 1 INBOX {%d+}\r\n%s\r\n" % (len(NEW), NEW))
        self.assertEqual(out, b"r1 NO [READ-ONLY] Mailbox is read-only\r\n")
        self.assertEqual(self.stored_uids(), [1, 2])

    def test_missing_target(self) -> None:
        """RFC 8508 section 3 / RFC 3501 section 6.3.11: NO [TRYCREATE]; the old message stays."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"r1 REPLACE 1 Nowhere {%d+}\r\n%s\r\n" % (len(NEW), NEW))
        self.assertEqual(out, b"r1 NO [TRYCREATE] No such mailbox\r\n")
        self.assertEqual(self.stored_uids(), [1, 2])

    def test_expunge_failure_takes_back(self) -> None:
        """RFC 8508 section 3: if the old message cannot be removed, the new one is taken back."""
        real = self.mailbox.expunge
        calls: list[int] = []

        def failing(uids: Any = None) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise StoreError("disk trouble")
            return real(uids)

        self.mailbox.expunge = failing  # type: ignore[method-assign]
        proto, transport = self.login()
        out = self.send(proto, transport, b"r1 REPLACE 1 INBOX {%d+}\r\n%s\r\n" % (len(NEW), NEW))
        self.assertIn(b"r1 NO ", out)
        self.assertEqual(self.stored_uids(), [1, 2])
        self.assertNotIn("\\Deleted", self.flags(1))
        self.flushLoggedErrors(StoreError)

    def test_not_selected(self) -> None:
        """RFC 8508 section 3: REPLACE is valid in the selected state only."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"r1 REPLACE 1 INBOX {%d+}\r\n%s\r\n" % (len(NEW), NEW))
        self.assertTrue(out.startswith(b"r1 BAD "), out)
