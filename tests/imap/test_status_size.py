"""
STATUS=SIZE (RFC 8438) through the IMAP adapter on StringTransport
(:class:`tests.imap.test_server.ServerTestCase`).
"""

from __future__ import annotations

from tests.imap.test_server import MESSAGES, ServerTestCase
from txmail.imap.commands import capabilities

__all__: list[str] = []


class StatusSizeTests(ServerTestCase):
    def test_advertised(self) -> None:
        """RFC 8438 section 2: the STATUS=SIZE capability."""
        self.assertIn("STATUS=SIZE", capabilities())
        _proto, transport = self.connect()
        self.assertIn(b" STATUS=SIZE ", transport.value())

    def test_size_is_sum_of_rfc822_sizes(self) -> None:
        """RFC 8438 section 3: SIZE is the total of the messages' RFC822.SIZE."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 FETCH 1:* (RFC822.SIZE)\r\n")
        sizes = [
            int(line.rsplit(b" ", 1)[1].rstrip(b")")) for line in out.split(b"\r\n") if line.startswith(b"* ")
        ]
        self.assertEqual(sizes, [len(m) for m in MESSAGES])
        out = self.send(proto, transport, b"s2 STATUS INBOX (MESSAGES SIZE)\r\n")
        self.assertEqual(
            out, b"* STATUS INBOX (MESSAGES 2 SIZE %d)\r\ns2 OK STATUS completed\r\n" % sum(sizes)
        )

    def test_size_follows_append_and_expunge(self) -> None:
        """RFC 8438 section 3: the size changes with the messages (APPEND adds, EXPUNGE removes)."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"a1 APPEND INBOX {5+}\r\nx\r\n\r\n\r\n")
        self.assertIn(b"a1 OK ", out)
        total = sum(len(m) for m in MESSAGES) + 5
        out = self.send(proto, transport, b"s2 STATUS INBOX (SIZE)\r\n")
        self.assertEqual(out, b"* STATUS INBOX (SIZE %d)\r\ns2 OK STATUS completed\r\n" % total)
        self.send(proto, transport, b"d1 STORE 1 +FLAGS (\\Deleted)\r\ne1 EXPUNGE\r\n")
        out = self.send(proto, transport, b"s3 STATUS INBOX (SIZE)\r\n")
        self.assertEqual(
            out, b"* STATUS INBOX (SIZE %d)\r\ns3 OK STATUS completed\r\n" % (total - len(MESSAGES[0]))
        )

    def test_empty_mailbox(self) -> None:
        """RFC 8438 section 3: an empty mailbox has SIZE 0; LIST-STATUS returns it too (RFC 5819)."""
        self.successResultOf(self.store.create_mailbox("Empty"))
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"s1 STATUS Empty (SIZE)\r\n")
        self.assertEqual(out, b"* STATUS Empty (SIZE 0)\r\ns1 OK STATUS completed\r\n")
        out = self.send(proto, transport, b'l1 LIST "" Empty RETURN (STATUS (SIZE))\r\n')
        self.assertIn(b"* STATUS Empty (SIZE 0)\r\n", out)
