"""
CATENATE (RFC 4469) and the IMAP URLs it takes (RFC 5092): the parser's
syntax, :mod:`txmail.imap.url`, the message builder driven without Twisted,
APPEND/MULTIAPPEND/REPLACE through the adapter on the memory store (the
setup of :class:`tests.imap.test_server.ServerTestCase`: INBOX holds
messages 1 and 2), and an end-to-end check with imaplib against the real
service on Maildir.
"""

from __future__ import annotations

import contextlib
import datetime
import imaplib
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.e2e._server import start_server
from tests.imap.test_server import LOGIN, MESSAGES, USER, ServerTestCase
from txmail.errors import NoSuchMailbox, NoSuchMessage, StoreError, UserExists
from txmail.imap.commands import capabilities
from txmail.imap.commands.catenate import MAX_URLS, build_messages
from txmail.imap.commands.context import run_now
from txmail.imap.fragment import LineFragment, LiteralFragment
from txmail.imap.parser import MAX_CATENATE_PARTS, ParseError, parse_command
from txmail.imap.responses import No
from txmail.imap.session import IMAPLimits, IMAPSession
from txmail.imap.types import Append, AppendMessage, CatenatePart, Replace, Section
from txmail.imap.url import MAX_URL, URLError, parse_url, response_text
from txmail.model import MessageSource

__all__: list[str] = []

HEADER = b"Subject: one\r\nFrom: bob@example.test\r\n\r\n"
MULTIPART = (
    b"Subject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n"
    b"--b--\r\n"
)


def parse(*pieces: bytes | LiteralFragment) -> Any:
    """Parse a command given as line pieces and literals."""
    fragments = [
        LiteralFragment(p.data, p.binary) if isinstance(p, LiteralFragment) else LineFragment(p)
        for p in pieces
    ]
    return parse_command(fragments)


class ParserTests(SynchronousTestCase):
    """RFC 4469 section 5: append-data =/ "CATENATE" SP "(" cat-part *(SP cat-part) ")"."""

    def test_catenate(self) -> None:
        """TEXT literals and URL astrings, in order, with the flags and date of the append."""
        args = parse(
            b'a APPEND Drafts (\\Seen) "01-Jan-2024 00:00:00 +0000" CATENATE (URL "/INBOX/;UID=1" TEXT ',
            LiteralFragment(b"text"),
            b" URL ;UID=2 TEXT ",
            LiteralFragment(b"\x00bin", True),
            b")",
        ).args
        self.assertIsInstance(args, Append)
        self.assertEqual(args.flags, ("\\Seen",))
        self.assertIsNotNone(args.date)
        self.assertEqual(
            args.catenate,
            (
                CatenatePart(url="/INBOX/;UID=1"),
                CatenatePart(text=b"text"),
                CatenatePart(url=";UID=2"),
                CatenatePart(text=b"\x00bin", binary=True),
            ),
        )
        self.assertEqual(args.messages[0].catenate, args.catenate)

    def test_utf8_part(self) -> None:
        """RFC 6855 section 4: a cat-part may be UTF8 (literal8)."""
        args = parse(b"a APPEND INBOX CATENATE (UTF8 (", LiteralFragment(b"x", True), b"))").args
        self.assertEqual(args.catenate, (CatenatePart(text=b"x", binary=True),))

    def test_multiappend(self) -> None:
        """RFC 4469 section 5 with RFC 3502: each message of a MULTIAPPEND may be a CATENATE."""
        args = parse(
            b"a APPEND INBOX ", LiteralFragment(b"plain"), b" (\\Flagged) CATENATE (URL /INBOX/;UID=1)"
        ).args
        self.assertIsNone(args.catenate)
        self.assertEqual(
            args.more,
            (AppendMessage(("\\Flagged",), None, b"", False, (CatenatePart(url="/INBOX/;UID=1"),)),),
        )

    def test_replace(self) -> None:
        """RFC 8508's append-message takes CATENATE too."""
        args = parse(b"a UID REPLACE 3 Drafts CATENATE (TEXT ", LiteralFragment(b"x"), b")").args
        self.assertIsInstance(args, Replace)
        self.assertEqual(args.message.catenate, (CatenatePart(text=b"x"),))

    def test_syntax_errors(self) -> None:
        """Empty lists, unknown parts, a missing literal, NUL in a plain literal, UTF8 after TEXT are BAD."""
        for pieces in (
            (b"a APPEND INBOX CATENATE ()",),
            (b"a APPEND INBOX CATENATE",),
            (b"a APPEND INBOX CATENATE (URL)",),
            (b"a APPEND INBOX CATENATE (FILE x)",),
            (b"a APPEND INBOX CATENATE (TEXT x)",),
            (b"a APPEND INBOX CATENATE (URL x",),
            (b"a APPEND INBOX CATENATE (URL x  URL y)",),
            (b"a APPEND INBOX CATENATE (TEXT ", LiteralFragment(b"a\x00b"), b")"),
            (b"a APPEND INBOX CATENATE (TEXT UTF8 (", LiteralFragment(b"x", True), b"))"),
            (b"a APPEND INBOX CATENATE (UTF8 (", LiteralFragment(b"x"), b"))"),
            (b"a APPEND INBOX CATENATE (URL x) extra",),
        ):
            self.assertRaises(ParseError, parse, *pieces)

    def test_part_limit(self) -> None:
        """At most MAX_CATENATE_PARTS parts: a bounded amount of work per message."""
        many = b" ".join([b"URL x"] * MAX_CATENATE_PARTS)
        self.assertEqual(
            len(parse(b"a APPEND INBOX CATENATE (" + many + b")").args.catenate), MAX_CATENATE_PARTS
        )
        self.assertRaises(ParseError, parse, b"a APPEND INBOX CATENATE (" + many + b" URL x)")


class URLTests(SynchronousTestCase):
    """RFC 5092: the URLs naming a message or a part of one."""

    def test_absolute(self) -> None:
        """imap://user;AUTH=*@host:port/mailbox;UIDVALIDITY=n/;UID=n/;SECTION=s/;PARTIAL=o.l."""
        url = parse_url(
            "imap://fred%40example.test;AUTH=*@Mail.Example.Test:143/Drafts/Sub;UIDVALIDITY=9/"
            ";UID=20/;SECTION=HEADER.FIELDS%20(TO%20FROM)/;PARTIAL=10.1024"
        )
        self.assertEqual((url.host, url.port, url.user), ("mail.example.test", 143, "fred@example.test"))
        self.assertEqual((url.mailbox, url.uidvalidity, url.uid), ("Drafts/Sub", 9, 20))
        self.assertEqual(url.section, Section((), "HEADER.FIELDS", ("TO", "FROM")))
        self.assertEqual(url.partial, (10, 1024))

    def test_paths(self) -> None:
        """Network-path and absolute-path references; keywords in any case; INBOX in any case."""
        url = parse_url("//host/inbox/;uid=3/;section=1.MIME/;partial=5")
        self.assertEqual((url.host, url.mailbox, url.uid, url.partial), ("host", "INBOX", 3, (5, None)))
        self.assertEqual(url.section, Section((1,), "MIME"))
        url = parse_url(
            "/INBOX;UIDVALIDITY=785799047/;UID=113330;section=1.5.9".replace(";section", "/;section")
        )
        self.assertEqual((url.host, url.uidvalidity, url.section), (None, 785799047, Section((1, 5, 9))))
        self.assertEqual(parse_url("/%E2%82%AC/;UID=1").mailbox, "\u20ac")

    def test_relative(self) -> None:
        """RFC 3986 section 5.2 against the selected mailbox: ;UID=n stays in it, name/;UID=n is a sibling."""
        self.assertEqual(parse_url(";UID=3/;SECTION=TEXT", "Work/Drafts").mailbox, "Work/Drafts")
        self.assertEqual(parse_url("Sent/;UID=3", "Work/Drafts").mailbox, "Work/Sent")
        self.assertEqual(parse_url("Sent/;UID=3", "INBOX").mailbox, "Sent")
        self.assertRaises(URLError, parse_url, ";UID=3", None)
        self.assertRaises(URLError, parse_url, ";SECTION=1", "INBOX")

    def test_urlauth_fields(self) -> None:
        """RFC 4467 section 7: ;EXPIRE=, ;URLAUTH=access:mech:token; the rump is what precedes the verifier."""
        text = (
            "imap://joe@example.com/INBOX/;uid=20;expire=2030-04-20T12:00:00Z;urlauth=submit+fred:internal:"
            + "ab" * 16
        )
        url = parse_url(text)
        self.assertEqual(url.expire, datetime.datetime(2030, 4, 20, 12, tzinfo=datetime.UTC))
        self.assertEqual((url.access, url.mechanism, url.token), ("submit+fred", "INTERNAL", "ab" * 16))
        self.assertEqual(url.rump, text[: -len(":internal:" + "ab" * 16)])

    def test_refused(self) -> None:
        """Anything that names no single message, or breaks the grammar, is a URLError."""
        for text in (
            "",
            "/INBOX",
            "/INBOX/;UID=0",
            "/INBOX;UID=1",
            "/INBOX/;UID=1/",
            "/INBOX/;UID=x",
            "/INBOX/;UID=99999999999",
            "/INBOX/;SECTION=1/;UID=1",
            "/INBOX/;UID=1/;UID=2",
            "/INBOX/;UID=1/;SECTION=BOGUS",
            "/INBOX/;UID=1/;PARTIAL=1.0",
            "/INBOX/;UID=1/;FOO=1",
            "/INBOX?SUBJECT%20x",
            "/../INBOX/;UID=1",
            "/%FF/;UID=1",
            "/a%00b/;UID=1",
            "/IN BOX/;UID=1",
            "http://example.com/INBOX/;UID=1",
            "imap:///INBOX/;UID=1",
            "imap://host:99999/INBOX/;UID=1",
            "imap://host/INBOX/;UID=1;EXPIRE=2030-01-01",
            "imap://host/INBOX/;UID=1;URLAUTH=nobody",
            "/INBOX/;UID=1" + "x" * MAX_URL,
        ):
            self.assertRaises(URLError, parse_url, text, "INBOX")

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.text(max_size=80),
            st.lists(
                st.sampled_from(
                    [
                        "imap://",
                        "//",
                        "/",
                        "u%40x@",
                        ";AUTH=*",
                        "h",
                        ":143",
                        "INBOX",
                        "%FF",
                        "%41",
                        ";UIDVALIDITY=",
                        ";UID=",
                        ";SECTION=",
                        ";PARTIAL=",
                        ";EXPIRE=",
                        ";URLAUTH=",
                        "1",
                        "0",
                        ".",
                        "2030-01-01T00:00:00Z",
                        "anonymous",
                        "user+",
                        "submit+",
                        ":internal:",
                        "0" * 32,
                        "HEADER.FIELDS%20(A)",
                        "[::1]",
                        "?",
                        "..",
                        "]",
                        " ",
                    ]
                ),
                max_size=12,
            ).map("".join),
        ),
        st.one_of(st.none(), st.just("INBOX"), st.just("a/b")),
    )
    def test_fuzz(self, text: str, base: str | None) -> None:
        """parse_url raises nothing but URLError, whatever the text."""
        try:
            url = parse_url(text, base)
        except URLError:
            return
        self.assertGreater(url.uid, 0)

    def test_response_text(self) -> None:
        """url-resp-text (erratum 2002): no "]", no controls, not empty, bounded."""
        self.assertEqual(response_text("/INBOX/;UID=1"), "/INBOX/;UID=1")
        self.assertEqual(response_text("a]b\r\nc d"), "abcd")
        self.assertEqual(response_text("]"), "-")
        self.assertEqual(len(response_text("x" * 1000)), 200)


class FakeMailbox:
    """A mailbox whose methods answer at once with plain values."""

    def __init__(self, messages: dict[int, bytes], uidvalidity: int = 7) -> None:
        self.messages = messages
        self.uidvalidity = uidvalidity
        self.reads = 0

    def read_message(self, uid: int) -> bytes:
        self.reads += 1
        if uid not in self.messages:
            raise NoSuchMessage(uid)
        return self.messages[uid]


class FakeStore:
    def __init__(self) -> None:
        self.mailboxes = {"INBOX": FakeMailbox({1: MESSAGES[0], 2: MULTIPART})}

    def get_mailbox(self, name: str) -> FakeMailbox:
        if name not in self.mailboxes:
            raise NoSuchMailbox(name)
        return self.mailboxes[name]


class FakeContext:
    """Just what the message builder reads of a CommandContext."""

    def __init__(self, limits: IMAPLimits | None = None) -> None:
        self.session = IMAPSession(limits=limits)
        self.session.user = USER
        self.store = FakeStore()
        self.server_names = frozenset({"mx.example.test"})


def build(ctx: FakeContext, *parts: CatenatePart) -> bytes:
    (message,) = run_now(build_messages(ctx, [AppendMessage((), None, b"", False, parts)]))  # type: ignore[arg-type]
    assert message.catenate is None
    return message.literal


def failure(ctx: FakeContext, *parts: CatenatePart) -> No:
    try:
        build(ctx, *parts)
    except No as e:
        return e
    raise AssertionError("the message was built")


class BuilderTests(SynchronousTestCase):
    """txmail.imap.commands.catenate.build_messages without Twisted."""

    def test_concatenation(self) -> None:
        """Section 3: the parts joined in order; sections and partials as FETCH BODY[section]<partial>."""
        ctx = FakeContext()
        data = build(
            ctx,
            CatenatePart(url="/INBOX/;UID=1/;SECTION=HEADER"),
            CatenatePart(text=b"new body\r\n"),
            CatenatePart(url="imap://MX.example.test/INBOX;UIDVALIDITY=7/;UID=2/;SECTION=1"),
            CatenatePart(url="/INBOX/;UID=2/;SECTION=2.MIME"),
            CatenatePart(url="/INBOX/;UID=1/;PARTIAL=0.12"),
            CatenatePart(url="/INBOX/;UID=1/;PARTIAL=1000"),
        )
        self.assertEqual(
            data,
            HEADER
            + b"new body\r\n"
            + b"hello"
            + b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + b"Subject: one",
        )

    def test_plain_messages_untouched(self) -> None:
        """An APPEND without CATENATE is given back as it is, without a read."""
        ctx = FakeContext()
        m = AppendMessage((), None, b"x")
        self.assertEqual(run_now(build_messages(ctx, [m])), (m,))  # type: ignore[arg-type]
        self.assertEqual(ctx.store.mailboxes["INBOX"].reads, 0)

    def test_same_message_read_once(self) -> None:
        """Consecutive URLs into one message read it once."""
        ctx = FakeContext()
        build(ctx, *(CatenatePart(url=f"/INBOX/;UID=2/;SECTION={n}") for n in (1, 2, 1)))
        self.assertEqual(ctx.store.mailboxes["INBOX"].reads, 1)

    def test_badurl(self) -> None:
        """Section 5: NO [BADURL url] for a URL that names nothing this user may read."""
        for url in (
            "/INBOX/;UID=9",  # no such message
            "/Nope/;UID=1",  # no such mailbox
            "/INBOX;UIDVALIDITY=8/;UID=1",  # another UIDVALIDITY
            "/INBOX/;UID=2/;SECTION=3",  # no such part
            "/INBOX/;UID=2/;SECTION=1.2.3",
            "imap://other.example/INBOX/;UID=1",  # another server
            "imap://bob%40example.test@mx.example.test/INBOX/;UID=1",  # another user
            "imap://mx.example.test/INBOX/;UID=1;URLAUTH=anonymous:internal:" + "0" * 32,  # no URLAUTH
            ";UID=1",  # relative, nothing selected
            "not a url",
        ):
            e = failure(FakeContext(), CatenatePart(text=b"x"), CatenatePart(url=url))
            self.assertEqual(e.code, "BADURL " + response_text(url), url)

    def test_own_user_accepted(self) -> None:
        """A URL may name the logged-in user (percent-encoded)."""
        url = "imap://alice%40example.test;AUTH=*@mx.example.test/INBOX/;UID=1"
        self.assertEqual(build(FakeContext(), CatenatePart(url=url)), MESSAGES[0])

    def test_toobig(self) -> None:
        """Section 3: a message built larger than the APPENDLIMIT is NO [TOOBIG]."""
        ctx = FakeContext(IMAPLimits(max_literal=len(MESSAGES[0]) + 3))
        self.assertEqual(
            build(ctx, CatenatePart(url="/INBOX/;UID=1"), CatenatePart(text=b"abc")), MESSAGES[0] + b"abc"
        )
        e = failure(ctx, CatenatePart(url="/INBOX/;UID=1"), CatenatePart(text=b"abcd"))
        self.assertEqual(e.code, "TOOBIG")

    def test_command_total_bounded(self) -> None:
        """Messages of one MULTIAPPEND together stay within what one APPEND may carry."""
        ctx = FakeContext(IMAPLimits(max_literal=1024))
        big = b"x" * 1000
        messages = [AppendMessage((), None, b"", False, (CatenatePart(text=big),))] * 70
        e = self.assertRaises(No, run_now, build_messages(ctx, messages))  # type: ignore[arg-type]
        self.assertEqual(e.code, "TOOBIG")

    def test_url_limit(self) -> None:
        """At most MAX_URLS URL reads per command: NO [LIMIT]."""
        ctx = FakeContext()
        part = AppendMessage((), None, b"", False, (CatenatePart(url="/INBOX/;UID=1/;PARTIAL=0.1"),) * 50)
        run_now(build_messages(ctx, [part] * (MAX_URLS // 50)))  # type: ignore[arg-type]
        e = self.assertRaises(No, run_now, build_messages(ctx, [part] * (MAX_URLS // 50 + 1)))  # type: ignore[arg-type]
        self.assertEqual(e.code, "LIMIT")

    def test_binary_kept(self) -> None:
        """A literal8 part makes the message binary (BINARY, RFC 3516)."""
        ctx = FakeContext()
        (m,) = run_now(
            build_messages(
                ctx, [AppendMessage((), None, b"", False, (CatenatePart(text=b"\x00", binary=True),))]
            )
        )  # type: ignore[arg-type]
        self.assertTrue(m.binary)


class CatenateServerTests(ServerTestCase):
    """APPEND, MULTIAPPEND and REPLACE with CATENATE through the adapter."""

    def stored(self, mailbox: Any = None) -> list[bytes]:
        box = mailbox or self.mailbox
        return [
            self.successResultOf(box.read_message(m.uid)) for m in self.successResultOf(box.list_messages())
        ]

    def test_advertised(self) -> None:
        """RFC 4469 section 2: the CATENATE capability."""
        self.assertIn("CATENATE", capabilities())
        proto, transport = self.login(select=None)
        self.assertIn(b" CATENATE", self.send(proto, transport, b"c CAPABILITY\r\n"))

    def test_append(self) -> None:
        """Section 3: the new message is the parts joined; APPENDUID as for any APPEND; the source is not \\Seen."""
        self.successResultOf(self.store.create_mailbox("Drafts"))
        drafts = self.successResultOf(self.store.get_mailbox("Drafts"))
        proto, transport = self.login()
        out = self.send(
            proto,
            transport,
            b'a APPEND Drafts (\\Draft) CATENATE (URL "/INBOX/;UID=1/;SECTION=HEADER" TEXT {6+}\r\nbody\r\n'
            b" URL ;UID=2/;SECTION=TEXT URL imap://10.0.0.1/INBOX/;UID=1/;PARTIAL=0.7)\r\n",
        )
        self.assertEqual(out, b"a OK [APPENDUID %d 1] APPEND completed\r\n" % drafts.uidvalidity)
        self.assertEqual(self.stored(drafts), [HEADER + b"body\r\n" + b"second body\r\n" + b"Subject"])
        self.assertEqual(self.flags(1), frozenset())

    def test_server_host_name(self) -> None:
        """A URL may name the server by its host name (IMAPFactory(hostname=)), in any case, or by the address connected to."""
        proto, transport = self.connect(hostname="mx.example.test")
        self.send(proto, transport, LOGIN)
        for host in (b"MX.Example.Test", b"mx.example.test:143", b"10.0.0.1"):
            out = self.send(
                proto, transport, b"a APPEND INBOX CATENATE (URL imap://%s/INBOX/;UID=2)\r\n" % host
            )
            self.assertTrue(out.startswith(b"a OK [APPENDUID "), out)
        out = self.send(
            proto, transport, b"a APPEND INBOX CATENATE (URL imap://mx.example.test.evil/INBOX/;UID=2)\r\n"
        )
        self.assertTrue(out.startswith(b"a NO [BADURL "), out)
        self.assertEqual(self.stored(), [*MESSAGES, MESSAGES[1], MESSAGES[1], MESSAGES[1]])

    def test_synchronizing_literal(self) -> None:
        """A synchronizing TEXT literal gets its continuation as any literal."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"a APPEND INBOX CATENATE (URL /INBOX/;UID=2 TEXT {3}\r\n")
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        out = self.send(proto, transport, b"end)\r\n")
        self.assertTrue(
            out.endswith(b"a OK [APPENDUID %d 3] APPEND completed\r\n" % self.mailbox.uidvalidity), out
        )
        self.assertEqual(self.stored()[-1], MESSAGES[1] + b"end")

    def test_badurl_appends_nothing(self) -> None:
        """Section 3: NO [BADURL url]; nothing is appended."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"a APPEND INBOX CATENATE (TEXT {2+}\r\nhi URL /INBOX/;UID=7)\r\n")
        self.assertEqual(out, b"a NO [BADURL /INBOX/;UID=7] No such message\r\n")
        out = self.send(
            proto, transport, b'a APPEND INBOX CATENATE (URL "imap://evil.example/INBOX/;UID=1")\r\n'
        )
        self.assertEqual(out, b"a NO [BADURL imap://evil.example/INBOX/;UID=1] URL names another server\r\n")
        self.assertEqual(self.stored(), MESSAGES)

    def test_other_users_mail(self) -> None:
        """A URL never reads another user's mailbox, even one that exists."""
        other = self.successResultOf(self.stores.store_for("bob@example.test"))
        inbox = self.successResultOf(other.get_mailbox("INBOX"))
        self.successResultOf(inbox.append(b"Subject: secret\r\n\r\nbob's\r\n"))
        proto, transport = self.login()
        url = b"imap://bob%40example.test@10.0.0.1/INBOX/;UID=1"
        out = self.send(proto, transport, b'a APPEND INBOX CATENATE (URL "' + url + b'")\r\n')
        self.assertEqual(out, b"a NO [BADURL " + url + b"] URL names another user's mailbox\r\n")
        self.assertEqual(self.stored(), MESSAGES)

    def test_multiappend_all_or_none(self) -> None:
        """Section 5 with RFC 3502: a bad URL in a later message appends none of them."""
        proto, transport = self.login()
        out = self.send(
            proto,
            transport,
            b"a APPEND INBOX {5+}\r\nfirst CATENATE (URL /INBOX/;UID=1) CATENATE (URL /INBOX/;UID=1/;SECTION=4)\r\n",
        )
        self.assertEqual(out, b"a NO [BADURL /INBOX/;UID=1/;SECTION=4] No such message part\r\n")
        self.assertEqual(self.stored(), MESSAGES)
        out = self.send(proto, transport, b"a APPEND INBOX {5+}\r\nfirst CATENATE (URL /INBOX/;UID=1)\r\n")
        uv = self.mailbox.uidvalidity
        self.assertEqual(
            out, b"* 4 EXISTS\r\n* 4 RECENT\r\na OK [APPENDUID %d 3:4] APPEND completed\r\n" % uv
        )
        self.assertEqual(self.stored(), [*MESSAGES, b"first", MESSAGES[0]])

    def test_store_failure_takes_back(self) -> None:
        """A store error on a later message takes the earlier ones back (RFC 3502 all or none)."""
        proto, transport = self.login()
        real = self.mailbox.append
        calls: list[bytes] = []

        def append(data: MessageSource, *args: Any) -> Any:
            calls.append(data.read())
            if len(calls) == 2:
                raise StoreError("disk full")
            return real(data, *args)

        self.patch(self.mailbox, "append", append)
        out = self.send(proto, transport, b"a APPEND INBOX CATENATE (URL ;UID=1) CATENATE (URL ;UID=2)\r\n")
        self.assertTrue(out.endswith(b"a NO [SERVERBUG] Internal server error; try again later\r\n"), out)
        self.flushLoggedErrors(StoreError)
        self.assertEqual(calls, MESSAGES)
        self.assertEqual(self.stored(), MESSAGES)

    def test_toobig(self) -> None:
        """Section 3: over the APPENDLIMIT is NO [TOOBIG]; nothing appended."""
        proto, transport = self.connect(limits=IMAPLimits(max_literal=len(MESSAGES[0]) + 2))
        self.send(proto, transport, LOGIN)
        out = self.send(proto, transport, b"a APPEND INBOX CATENATE (URL /INBOX/;UID=1 TEXT {3+}\r\nabc)\r\n")
        self.assertEqual(out, b"a NO [TOOBIG] Message too large\r\n")
        self.assertEqual(self.stored(), MESSAGES)

    def test_quota(self) -> None:
        """The built message counts against the quota (RFC 9208 section 4.3), as a literal would."""
        from txmail.quota import Quotas

        used = self.successResultOf(self.store.usage()).octets
        proto, transport = self.connect(quotas=Quotas(used + len(MESSAGES[0])))
        self.send(proto, transport, LOGIN)
        out = self.send(proto, transport, b"a APPEND INBOX CATENATE (URL /INBOX/;UID=1 TEXT {1+}\r\nx)\r\n")
        self.assertEqual(out, b"a NO [OVERQUOTA] Quota exceeded\r\n")
        out = self.send(proto, transport, b"a APPEND INBOX CATENATE (URL /INBOX/;UID=1)\r\n")
        self.assertTrue(out.startswith(b"a OK [APPENDUID "), out)

    def test_bad_syntax(self) -> None:
        """BAD for a CATENATE that breaks the grammar."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"a APPEND INBOX CATENATE ()\r\n")
        self.assertTrue(out.startswith(b"a BAD "), out)

    def test_replace(self) -> None:
        """RFC 8508 with CATENATE: the replacement is built from the old message's parts."""
        proto, transport = self.login()
        out = self.send(
            proto,
            transport,
            b"r UID REPLACE 1 INBOX CATENATE (URL ;UID=1/;SECTION=HEADER TEXT {7+}\r\nedited.)\r\n",
        )
        self.assertTrue(out.endswith(b"r OK UID REPLACE completed\r\n"), out)
        self.assertEqual(self.stored(), [MESSAGES[1], HEADER + b"edited."])
        out = self.send(proto, transport, b"r UID REPLACE 2 INBOX CATENATE (URL ;UID=1)\r\n")
        self.assertEqual(out, b"r NO [BADURL ;UID=1] No such message\r\n")


class EndToEndTests(TestCase):
    """imaplib against the real service on Maildir: APPEND ... CATENATE."""

    timeout = 120

    @defer.inlineCallbacks
    def test_catenate(self) -> Any:
        server = yield start_server(self, imap=["tcp:0:interface=127.0.0.1"])
        with contextlib.suppress(UserExists):
            server.directory.add_user(USER, "imap secret")
        host, port = server.address("imap")

        def client() -> tuple[Any, Any, Any]:
            c = imaplib.IMAP4(host, port, timeout=20)
            try:
                c.login(USER, "imap secret")
                assert "CATENATE" in c.capabilities
                c.append("INBOX", "", None, MULTIPART)
                c.select("INBOX")
                # imaplib sends one literal at most, at the end: a LITERAL+ one inside the argument.
                ok = c._simple_command(
                    "APPEND",
                    "Drafts",
                    'CATENATE (URL "imap://mx.example.test/INBOX/;UID=1/;SECTION=HEADER" TEXT {7+}\r\n'
                    'edited\n URL ";UID=1/;SECTION=2.MIME" URL "/INBOX/;UID=1/;SECTION=2")',
                )
                bad = c._simple_command("APPEND", "Drafts", "CATENATE (URL /INBOX/;UID=99)")
                c.select("Drafts")
                _typ, data = c.uid("FETCH", "1", "(BODY.PEEK[])")
                return ok, bad, data
            finally:
                c.logout()

        ok, bad, data = yield deferToThread(client)
        self.assertEqual(ok[0], "OK")
        self.assertTrue(re.match(rb"\[APPENDUID \d+ 1\]", ok[1][0]), ok)
        self.assertEqual(bad[0], "NO")
        self.assertTrue(bad[1][0].startswith(b"[BADURL /INBOX/;UID=99]"), bad)
        header = MULTIPART.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        part2 = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC"
        self.assertEqual(data[0][1], header + b"edited\r\n" + part2)
