"""
End to end (issue 12, section 0): Maildir files another program wrote with
bare LF line ends (Postfix's local and virtual, Dovecot's LDA, procmail,
mutt) are dropped into a user's ``new/`` before the mailbox is opened, then
read from the real service over imaplib and poplib: every body section,
RFC822.SIZE and the BODYSTRUCTURE counts are the CRLF ones (RFC 3501
sections 2.3.4 and 7.4.2), and POP3's LIST and RETR agree with them.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import re
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e._server import start_server

USER = "alice@example.test"
PASSWORD = "correct horse"
ENDPOINT = "tcp:0:interface=127.0.0.1"

#: The issue's example, as an LF-only delivery agent writes it.
SIMPLE_LF = b"From: a@b.test\nSubject: lf\n\nline\n"
SIMPLE = b"From: a@b.test\r\nSubject: lf\r\n\r\nline\r\n"
#: A multipart message with LF line ends, one CRLF line and a line starting with a dot.
MULTIPART_LF = (
    b"From: Bob <bob@remote.test>\n"
    b"To: alice@example.test\n"
    b"Subject: parts\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/alternative; boundary="xyz"\n'
    b"\n"
    b"preamble\n"
    b"--xyz\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"\n"
    b"one\r\n"
    b"two\n"
    b".three\n"
    b"--xyz\n"
    b"Content-Type: text/html\n"
    b"\n"
    b"<p>four</p>\n"
    b"--xyz--\n"
)
MULTIPART = MULTIPART_LF.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _literals(data: list[Any]) -> dict[bytes, bytes]:
    """The literals of one imaplib FETCH answer, by the item that announced them."""
    out = {}
    for part in data:
        if isinstance(part, tuple):
            item = re.search(rb"([A-Z0-9.]+(?:\[[^\]]*\])?(?:<\d+>)?) \{\d+\}$", part[0])
            assert item is not None, part[0]
            out[item.group(1)] = part[1]
    return out


def _text(data: list[Any]) -> bytes:
    """The non-literal text of one imaplib FETCH answer."""
    return b"".join(p[0] if isinstance(p, tuple) else p for p in data)


def ok(result: tuple[str, Any]) -> Any:
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


class MaildirLineEndTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self, imap=[ENDPOINT], pop3=[ENDPOINT])
        self.server.directory.add_user(USER, PASSWORD)
        # Delivered by another program before any session opens the INBOX.
        inbox = os.path.join(self.server.settings.data_dir, "mail", "example.test", "alice")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(inbox, sub), exist_ok=True)
        for name, data in (
            ("1700000000.V801I10M1.other.host", SIMPLE_LF),
            ("1700000001.V801I11M2.other.host", MULTIPART_LF),
        ):
            with open(os.path.join(inbox, "tmp", name), "wb") as f:
                f.write(data)
            os.rename(os.path.join(inbox, "tmp", name), os.path.join(inbox, "new", name))

    def imap(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4(*self.server.address("imap"), timeout=20)
        self.addCleanup(_close_imap, client)
        client.login(USER, PASSWORD)
        return client

    @defer.inlineCallbacks
    def test_imap_sections_and_sizes(self) -> Any:
        """BODY[] and every section come with CRLF; RFC822.SIZE and BODYSTRUCTURE count CRLF."""

        def run() -> dict[str, Any]:
            c = self.imap()
            out: dict[str, Any] = {"select": ok(c.select("INBOX"))}
            out["simple"] = ok(c.fetch("1", "(RFC822.SIZE BODY.PEEK[])"))
            out["simple_parts"] = ok(
                c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT] BODY.PEEK[HEADER])")
            )
            out["simple_structure"] = ok(c.fetch("1", "(BODYSTRUCTURE)"))
            out["multi"] = ok(c.fetch("2", "(RFC822.SIZE BODY.PEEK[] RFC822.HEADER)"))
            out["multi_parts"] = ok(
                c.fetch(
                    "2",
                    "(BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[2] BODY.PEEK[HEADER.FIELDS.NOT (TO FROM)]"
                    " BODY.PEEK[]<10.20>)",
                )
            )
            out["multi_structure"] = ok(c.fetch("2", "(BODYSTRUCTURE)"))
            out["search"] = ok(c.search(None, "LARGER", str(len(SIMPLE) - 1)))
            out["rfc822"] = ok(c.fetch("1", "(RFC822)"))  # not a PEEK: sets \Seen, the file is renamed
            out["after_rename"] = ok(c.fetch("1", "(FLAGS RFC822.SIZE BODY.PEEK[TEXT])"))
            c.logout()
            return out

        out = yield deferToThread(run)
        self.assertEqual(out["select"], [b"2"])
        self.assertIn(b"RFC822.SIZE %d " % len(SIMPLE), _text(out["simple"]))
        self.assertEqual(_literals(out["simple"]), {b"BODY[]": SIMPLE})
        self.assertEqual(
            _literals(out["simple_parts"]),
            {
                b"BODY[HEADER.FIELDS (SUBJECT)]": b"Subject: lf\r\n\r\n",
                b"BODY[TEXT]": b"line\r\n",
                b"BODY[HEADER]": b"From: a@b.test\r\nSubject: lf\r\n\r\n",
            },
        )
        # ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" <octets> <lines> ...)
        self.assertRegex(_text(out["simple_structure"]), rb'"7BIT" 6 1[ )]')

        self.assertIn(b"RFC822.SIZE %d " % len(MULTIPART), _text(out["multi"]))
        header = MULTIPART[: MULTIPART.index(b"\r\n\r\n") + 4]
        self.assertEqual(_literals(out["multi"]), {b"BODY[]": MULTIPART, b"RFC822.HEADER": header})
        plain = b"one\r\ntwo\r\n.three"  # the CRLF before the delimiter belongs to it (RFC 2046)
        self.assertEqual(
            _literals(out["multi_parts"]),
            {
                b"BODY[1]": plain,
                b"BODY[1.MIME]": b"Content-Type: text/plain; charset=utf-8\r\n\r\n",
                b"BODY[2]": b"<p>four</p>",
                b"BODY[HEADER.FIELDS.NOT (TO FROM)]": (
                    b"Subject: parts\r\nMIME-Version: 1.0\r\n"
                    b'Content-Type: multipart/alternative; boundary="xyz"\r\n\r\n'
                ),
                b"BODY[]<10>": MULTIPART[10:30],
            },
        )
        structure = _text(out["multi_structure"])
        self.assertRegex(structure, rb'"PLAIN" \("CHARSET" "utf-8"\) NIL NIL "7BIT" %d 3[ )]' % len(plain))
        self.assertRegex(structure, rb'"HTML" NIL NIL NIL "7BIT" 11 1[ )]')
        self.assertEqual(out["search"], [b"1 2"])  # SEARCH LARGER counts CRLF too
        self.assertEqual(_literals(out["rfc822"]), {b"RFC822": SIMPLE})
        self.assertIn(b"\\Seen", _text(out["after_rename"]))
        self.assertIn(b"RFC822.SIZE %d" % len(SIMPLE), _text(out["after_rename"]))
        self.assertEqual(_literals(out["after_rename"]), {b"BODY[TEXT]": b"line\r\n"})

    @defer.inlineCallbacks
    def test_pop3_sizes_agree(self) -> Any:
        """POP3 LIST, STAT and RETR give the same CRLF sizes and octets as IMAP (converted once)."""

        def run() -> dict[str, Any]:
            p = poplib.POP3(*self.server.address("pop3"), timeout=20)
            try:
                p.user(USER)
                p.pass_(PASSWORD)
                out: dict[str, Any] = {"stat": p.stat(), "list": p.list()[1]}
                out["retr"] = [p.retr(n) for n in (1, 2)]
                out["top"] = p.top(2, 1)
                p.quit()
            finally:
                with contextlib.suppress(Exception):
                    p.close()
            c = self.imap()
            c.select("INBOX", readonly=True)
            out["imap"] = ok(c.fetch("1:2", "(RFC822.SIZE)"))
            c.logout()
            return out

        out = yield deferToThread(run)
        self.assertEqual(out["stat"], (2, len(SIMPLE) + len(MULTIPART)))
        self.assertEqual(out["list"], [b"1 %d" % len(SIMPLE), b"2 %d" % len(MULTIPART)])
        for (resp, lines, octets), want in zip(out["retr"], (SIMPLE, MULTIPART), strict=True):
            self.assertIn(b"%d octets" % len(want), resp)
            self.assertEqual(octets, len(want))  # poplib's count, dot-stuffing taken out
            # poplib removes the dot-stuffing and the line ends; put the CRLFs back.
            self.assertEqual(b"".join(line + b"\r\n" for line in lines), want)
        _, top_lines, _ = out["top"]
        self.assertEqual(top_lines[-2:], [b"", b"preamble"])
        self.assertEqual(
            [_text([d]) for d in out["imap"]],
            [b"1 (RFC822.SIZE %d)" % len(SIMPLE), b"2 (RFC822.SIZE %d)" % len(MULTIPART)],
        )


def _close_imap(client: imaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):
        client.shutdown()
