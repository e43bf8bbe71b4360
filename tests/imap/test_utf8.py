"""
UTF8=ACCEPT (RFC 6855) through the IMAP adapter on StringTransport
(:class:`tests.imap.test_server.ServerTestCase`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport

from tests.imap.test_server import ServerTestCase
from txmail.imap.commands import capabilities
from txmail.imap.server import IMAPServerProtocol

__all__: list[str] = []

NAME = "Entwürfe"
MUTF7 = b"Entw&APw-rfe"
UTF8 = NAME.encode("utf-8")


class UTF8AcceptTests(ServerTestCase):
    def enabled(self, select: str | None = None) -> tuple[IMAPServerProtocol, StringTransport]:
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"e1 ENABLE UTF8=ACCEPT\r\n")
        self.assertEqual(out, b"* ENABLED UTF8=ACCEPT\r\ne1 OK ENABLE completed\r\n")
        if select is not None:
            out = self.send(proto, transport, b"s1 SELECT " + select.encode() + b"\r\n")
            self.assertIn(b"s1 OK ", out)
        return proto, transport

    def test_advertised(self) -> None:
        """RFC 6855 section 3: the UTF8=ACCEPT capability, enabled with ENABLE (RFC 5161)."""
        self.assertIn("UTF8=ACCEPT", capabilities())
        proto, transport = self.enabled()
        out = self.send(proto, transport, b"e2 ENABLE UTF8=ACCEPT\r\n")
        self.assertEqual(out, b"* ENABLED\r\ne2 OK ENABLE completed\r\n")

    def test_names_modified_utf7_before(self) -> None:
        """Without ENABLE, names stay modified UTF-7 (RFC 3501 section 5.1.3); raw UTF-8 names are not names."""
        self.successResultOf(self.store.create_mailbox(NAME))
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b'l1 LIST "" Entw*\r\n')
        self.assertEqual(out, b'* LIST (\\HasNoChildren) "/" ' + MUTF7 + b"\r\nl1 OK LIST completed\r\n")
        out = self.send(proto, transport, b'c1 CREATE "' + UTF8 + b'2"\r\n')
        self.assertTrue(out.startswith(b"c1 NO "), out)

    def test_names_utf8_after(self) -> None:
        """RFC 6855 section 3: after ENABLE, names are UTF-8 in commands and responses."""
        proto, transport = self.enabled()
        out = self.send(proto, transport, b'c1 CREATE "' + UTF8 + b'"\r\n')
        self.assertRegex(out, rb"^c1 OK \[MAILBOXID \(F[0-9a-f]{24}\)\] CREATE completed\r\n$")  # RFC 8474
        self.assertIn(NAME, [f.name for f in self.successResultOf(self.store.list_mailboxes())])
        out = self.send(proto, transport, b'l1 LIST "" "Entw*"\r\n')
        self.assertEqual(out, b'* LIST (\\HasNoChildren) "/" "' + UTF8 + b'"\r\nl1 OK LIST completed\r\n')
        out = self.send(proto, transport, b'st1 STATUS "' + UTF8 + b'" (MESSAGES)\r\n')
        self.assertEqual(out, b'* STATUS "' + UTF8 + b'" (MESSAGES 0)\r\nst1 OK STATUS completed\r\n')
        # An ampersand is an ampersand: no modified UTF-7 decoding.
        out = self.send(proto, transport, b"c2 CREATE A&B\r\n")
        self.assertRegex(out, rb"^c2 OK \[MAILBOXID \(F[0-9a-f]{24}\)\] CREATE completed\r\n$")  # RFC 8474
        self.assertIn("A&B", [f.name for f in self.successResultOf(self.store.list_mailboxes())])

    def test_quoted_utf8_search(self) -> None:
        """RFC 6855 section 3: UTF-8 in quoted strings (here a SEARCH string)."""
        self.successResultOf(self.mailbox.append("Subject: Grüße\r\n\r\nx\r\n".encode(), (), 1_600_000_000))
        proto, transport = self.enabled(select="INBOX")
        out = self.send(proto, transport, 'f1 SEARCH SUBJECT "grüße"\r\n'.encode())
        self.assertEqual(out, b"* SEARCH 3\r\nf1 OK SEARCH completed\r\n")

    def test_search_charset_is_bad(self) -> None:
        """RFC 6855 section 3: SEARCH with CHARSET after ENABLE gets BAD (before ENABLE it is fine)."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 SEARCH CHARSET UTF-8 ALL\r\n")
        self.assertEqual(out, b"* SEARCH 1 2\r\nf1 OK SEARCH completed\r\n")
        self.send(proto, transport, b"e1 ENABLE UTF8=ACCEPT\r\n")
        out = self.send(proto, transport, b"f2 SEARCH CHARSET UTF-8 ALL\r\n")
        self.assertTrue(out.startswith(b"f2 BAD "), out)
        out = self.send(proto, transport, b"f3 SEARCH ALL\r\n")
        self.assertEqual(out, b"* SEARCH 1 2\r\nf3 OK SEARCH completed\r\n")

    def test_sort_charset_other_than_utf8_is_bad(self) -> None:
        """RFC 6855 section 3, erratum 4029: SORT/THREAD with a charset other than UTF-8 get BAD."""
        proto, transport = self.enabled(select="INBOX")
        out = self.send(proto, transport, b"o1 SORT (SUBJECT) US-ASCII ALL\r\n")
        self.assertTrue(out.startswith(b"o1 BAD "), out)
        out = self.send(proto, transport, b"o2 SORT (SUBJECT) UTF-8 ALL\r\n")
        self.assertEqual(out, b"* SORT 1 2\r\no2 OK SORT completed\r\n")

    def append(self, proto: Any, transport: Any, data: bytes) -> bytes:
        return self.send(proto, transport, b"a1 APPEND INBOX UTF8 (~{%d+}\r\n%s)\r\n" % (len(data), data))

    def test_append_utf8(self) -> None:
        """RFC 6855 section 4: APPEND with the UTF8 data item (a literal8) stores the message as sent."""
        message = "Subject: Grüße\r\nFrom: jürgen@example.test\r\n\r\nHallo\r\n".encode()
        proto, transport = self.enabled()
        out = self.append(proto, transport, message)
        self.assertIn(b"a1 OK [APPENDUID ", out)
        infos = self.successResultOf(self.mailbox.list_messages())
        stored = self.successResultOf(self.mailbox.read_message(infos[-1].uid))
        self.assertEqual(getattr(stored, "data", stored), message)

    def test_append_utf8_needs_literal8(self) -> None:
        """RFC 6855 section 4: append-data =/ "UTF8" SP "(" literal8 ")"."""
        proto, transport = self.enabled()
        out = self.send(proto, transport, b"a1 APPEND INBOX UTF8 ({2+}\r\nab)\r\n")
        self.assertTrue(out.startswith(b"a1 BAD "), out)
