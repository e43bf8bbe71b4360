"""
CREATE-SPECIAL-USE (RFC 6154 section 3) through the IMAP adapter, on the
memory store (:class:`tests.imap.test_server.ServerTestCase`).
"""

from __future__ import annotations

from tests.imap.test_server import ServerTestCase
from txmail.imap.commands import capabilities
from txmail.imap.fragment import LineFragment
from txmail.imap.parser import ParseError, parse_command
from txmail.imap.types import Create
from txmail.model import SpecialUse

__all__: list[str] = []


class ParseTests(ServerTestCase):
    def test_use_list(self) -> None:
        """RFC 6154 section 6: create-param =/ "USE" SP "(" [use-attr *(SP use-attr)] ")"."""
        cmd = parse_command([LineFragment(b"a CREATE Spam (USE (\\Junk))")])
        self.assertEqual(cmd.args, Create("Spam", ("\\Junk",)))
        cmd = parse_command([LineFragment(b"a CREATE Spam (USE ())")])
        self.assertEqual(cmd.args, Create("Spam"))
        cmd = parse_command([LineFragment(b"a CREATE Spam (USE (\\Junk \\Sent))")])
        self.assertEqual(cmd.args, Create("Spam", ("\\Junk", "\\Sent")))

    def test_bad_syntax(self) -> None:
        """RFC 4466 section 2.2: an unknown create-param, or a bad use-attr, is BAD."""
        for line in (
            b"a CREATE x (FOO (\\Junk))",
            b"a CREATE x (USE (Junk))",
            b"a CREATE x ()",
            b"a CREATE x (USE \\Junk)",
        ):
            self.assertRaises(ParseError, parse_command, [LineFragment(line)])


class CreateSpecialUseTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        # The store holds INBOX only: the login would create the default
        # special folders, so give it one plain folder first.
        self.successResultOf(self.store.create_mailbox("Folder"))

    def test_advertised(self) -> None:
        """RFC 6154 section 3: the CREATE-SPECIAL-USE capability."""
        self.assertIn("CREATE-SPECIAL-USE", capabilities())

    def test_create_with_role(self) -> None:
        """RFC 6154 section 3: the new mailbox has the role, and LIST shows it (section 2)."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"c1 CREATE Spam (USE (\\Junk))\r\n")
        self.assertRegex(out, rb"^c1 OK \[MAILBOXID \(F[0-9a-f]{24}\)\] CREATE completed\r\n$")  # RFC 8474
        self.assertEqual(self.successResultOf(self.store.special_use_mailbox(SpecialUse.JUNK)), "Spam")
        out = self.send(proto, transport, b'c2 LIST (SPECIAL-USE) "" *\r\n')
        self.assertIn(b'* LIST (\\HasNoChildren \\Junk) "/" Spam\r\n', out)

    def test_empty_use_is_plain(self) -> None:
        """RFC 6154 section 3: USE () creates a mailbox without a role."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"c1 CREATE Plain (USE ())\r\n")
        self.assertRegex(out, rb"^c1 OK \[MAILBOXID \(F[0-9a-f]{24}\)\] CREATE completed\r\n$")  # RFC 8474

    def test_role_taken(self) -> None:
        """RFC 6154 section 3: a role another mailbox has is NO [USEATTR]; nothing is created."""
        self.successResultOf(self.store.create_mailbox("Sent", SpecialUse.SENT))
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"c1 CREATE Sent2 (USE (\\Sent))\r\n")
        self.assertTrue(out.startswith(b"c1 NO [USEATTR] "), out)
        names = [f.name for f in self.successResultOf(self.store.list_mailboxes("*"))]
        self.assertNotIn("Sent2", names)

    def test_unknown_role(self) -> None:
        """RFC 6154 section 3: a role the server cannot give (\\All, an extension) is NO [USEATTR]."""
        proto, transport = self.login(select=None)
        for n, attr in enumerate((b"\\All", b"\\Flagged", b"\\Whatever")):
            out = self.send(proto, transport, b"c%d CREATE X (USE (%s))\r\n" % (n, attr))
            self.assertTrue(out.startswith(b"c%d NO [USEATTR] " % n), out)

    def test_two_roles(self) -> None:
        """RFC 6154 section 3: the store keeps one role per mailbox: two are NO [USEATTR]."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"c1 CREATE X (USE (\\Junk \\Trash))\r\n")
        self.assertTrue(out.startswith(b"c1 NO [USEATTR] "), out)

    def test_case_insensitive(self) -> None:
        """RFC 6154 section 6: use-attr names are case-insensitive as atoms are."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"c1 CREATE Old (USE (\\archive))\r\n")
        self.assertRegex(out, rb"^c1 OK \[MAILBOXID \(F[0-9a-f]{24}\)\] CREATE completed\r\n$")  # RFC 8474
        self.assertEqual(self.successResultOf(self.store.special_use_mailbox(SpecialUse.ARCHIVE)), "Old")
