"""
URLAUTH (RFC 4467): the syntax of GENURLAUTH, RESETKEY and URLFETCH, their
responses, the stores' access keys (:class:`txmail.interfaces.IURLAuthKeys`,
memory and Maildir, kept across restarts), the commands and CATENATE with
signed URLs through the adapter (the setup of
:class:`tests.imap.test_server.ServerTestCase`, with a second user, bob),
and an end-to-end check with imaplib against the real service on Maildir,
restarted in between.
"""

from __future__ import annotations

import datetime
import imaplib
import os
import re
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e._server import IMAPRestartCase
from tests.imap.test_server import CREDENTIALS, LOGIN, MESSAGES, USER, ServerTestCase
from txmail.auth.authenticator import Authenticator
from txmail.imap import serialize
from txmail.imap.commands import capabilities
from txmail.imap.commands import urlauth as urlauth_module
from txmail.imap.commands.context import call, run_now
from txmail.imap.fragment import LineFragment
from txmail.imap.parser import MAX_URLAUTH_ITEMS, ParseError, parse_command
from txmail.imap.responses import GenUrlAuthData, UrlFetchData
from txmail.imap.session import IMAPSession
from txmail.imap.types import GenUrlAuth, ResetKey, UrlFetch
from txmail.imap.url import parse_url
from txmail.interfaces import IURLAuthKeys
from txmail.store.maildir import URLAUTH_KEYS, MaildirProvider
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

BOB = "bob@example.test"
HOST = "mx.example.test"
BOB_MESSAGE = b"Subject: from bob\r\n\r\nbob's text\r\n"


def parse(line: bytes) -> Any:
    return parse_command([LineFragment(line)]).args


class ParserTests(SynchronousTestCase):
    """RFC 4467 section 9."""

    def test_genurlauth(self) -> None:
        """genurlauth = "GENURLAUTH" 1*(SP url-rump SP mechanism); mechanisms upper-cased."""
        args = parse(b'a GENURLAUTH "imap://a@h/INBOX/;UID=1;URLAUTH=anonymous" internal x y z INTERNAL')
        self.assertEqual(
            args,
            GenUrlAuth(
                (("imap://a@h/INBOX/;UID=1;URLAUTH=anonymous", "INTERNAL"), ("x", "Y"), ("z", "INTERNAL"))
            ),
        )
        for bad in (b"a GENURLAUTH", b"a GENURLAUTH x", b"a GENURLAUTH x ", b"a GENURLAUTH x IN/TERNAL"):
            self.assertRaises(ParseError, parse, bad)
        self.assertRaises(ParseError, parse, b"a GENURLAUTH" + b" x INTERNAL" * (MAX_URLAUTH_ITEMS + 1))

    def test_resetkey(self) -> None:
        """resetkey = "RESETKEY" [SP mailbox *(SP mechanism)]."""
        self.assertEqual(parse(b"a RESETKEY"), ResetKey())
        self.assertEqual(parse(b"a RESETKEY inbox"), ResetKey("INBOX"))
        self.assertEqual(parse(b"a RESETKEY Drafts internal X"), ResetKey("Drafts", ("INTERNAL", "X")))
        self.assertRaises(ParseError, parse, b"a RESETKEY ")

    def test_urlfetch(self) -> None:
        """urlfetch = "URLFETCH" 1*(SP url-full)."""
        self.assertEqual(parse(b'a URLFETCH "x" y'), UrlFetch(("x", "y")))
        self.assertRaises(ParseError, parse, b"a URLFETCH")
        self.assertRaises(ParseError, parse, b"a URLFETCH" + b" x" * (MAX_URLAUTH_ITEMS + 1))

    def test_responses(self) -> None:
        """* GENURLAUTH url ... and * URLFETCH url nstring (RFC 4467 section 7)."""
        self.assertEqual(
            b"".join(serialize.render(GenUrlAuthData(("imap://a/b", "c")))),
            b'* GENURLAUTH "imap://a/b" "c"\r\n',
        )
        self.assertEqual(
            b"".join(serialize.render(UrlFetchData("u", b"a\r\nb"))), b"* URLFETCH u {4}\r\na\r\nb\r\n"
        )
        self.assertEqual(b"".join(serialize.render(UrlFetchData("u", None))), b"* URLFETCH u NIL\r\n")


class KeyStoreTests(SynchronousTestCase):
    """IURLAuthKeys in the memory and Maildir stores."""

    def check(self, store: Any) -> bytes:
        self.assertTrue(IURLAuthKeys.providedBy(store))
        self.assertIsNone(self.successResultOf(store.urlauth_key("INBOX", 5)))
        key = self.successResultOf(store.urlauth_key("INBOX", 5, True))
        self.assertGreaterEqual(len(key), 16)  # RFC 4467 section 3: at least 128 bits
        self.assertEqual(self.successResultOf(store.urlauth_key("INBOX", 5, True)), key)
        self.assertIsNone(self.successResultOf(store.urlauth_key("INBOX", 6)))  # another UIDVALIDITY
        other = self.successResultOf(store.urlauth_key("Drafts", 5, True))
        self.assertNotEqual(other, key)
        self.successResultOf(store.reset_urlauth_keys("Drafts"))
        self.assertIsNone(self.successResultOf(store.urlauth_key("Drafts", 5)))
        self.assertEqual(self.successResultOf(store.urlauth_key("INBOX", 5)), key)
        return key  # type: ignore[no-any-return]

    def test_memory(self) -> None:
        store = self.successResultOf(MemoryProvider().store_for(USER))
        self.check(store)
        self.successResultOf(store.reset_urlauth_keys())
        self.assertIsNone(self.successResultOf(store.urlauth_key("INBOX", 5)))

    def test_maildir_survives_restart(self) -> None:
        """The Maildir store keeps the keys in a file only its owner reads, across restarts."""
        root = self.mktemp()
        store = self.successResultOf(MaildirProvider(root).store_for(USER))
        key = self.check(store)
        path = os.path.join(store.root, URLAUTH_KEYS)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        again = self.successResultOf(MaildirProvider(root).store_for(USER))
        self.assertEqual(self.successResultOf(again.urlauth_key("INBOX", 5)), key)
        self.successResultOf(again.reset_urlauth_keys())
        self.assertIsNone(
            self.successResultOf(
                self.successResultOf(MaildirProvider(root).store_for(USER)).urlauth_key("INBOX", 5)
            )
        )

    def test_maildir_damaged_file(self) -> None:
        """A damaged key file gives no key (no URL is accepted wrongly); GENURLAUTH makes new ones."""
        root = self.mktemp()
        store = self.successResultOf(MaildirProvider(root).store_for(USER))
        with open(os.path.join(store.root, URLAUTH_KEYS), "w") as f:
            f.write("{not json")
        self.assertIsNone(self.successResultOf(store.urlauth_key("INBOX", 5)))
        self.assertTrue(self.successResultOf(store.urlauth_key("INBOX", 5, True)))


class HandlerContext:
    """A CommandContext for the handlers without Twisted: alice's memory store, bob's through user_store."""

    def __init__(self) -> None:
        self.provider = MemoryProvider()
        self.session = IMAPSession()
        self.session.user = USER
        self.store = run_now(call(self.provider.store_for, USER))
        self.server_names = frozenset({HOST})
        self.emitted: list[Any] = []

    async def user_store(self, user: str) -> Any:
        return (await self.provider.store_for(user)) if user == BOB else None

    def emit(self, *responses: Any) -> None:
        self.emitted.extend(responses)

    async def drain(self) -> None:
        pass


class HandlerTests(SynchronousTestCase):
    """The handlers of txmail.imap.commands.urlauth driven with run_now."""

    def test_generate_fetch_reset(self) -> None:
        ctx = HandlerContext()
        inbox = ctx.store._boxes["INBOX"]
        inbox.append(b"Subject: x\r\n\r\nbody\r\n")
        rump = f"imap://alice%40example.test@{HOST}/INBOX/;UID=1/;SECTION=TEXT;URLAUTH=authuser"
        run_now(
            urlauth_module.genurlauth(
                ctx, parse_command([LineFragment(b'g GENURLAUTH "%s" INTERNAL' % rump.encode())])
            )
        )  # type: ignore[arg-type]
        (generated,) = ctx.emitted
        (url,) = generated.urls
        fetch = parse_command([LineFragment(b'f URLFETCH "%s" "%s"' % (url.encode(), rump.encode()))])
        run_now(urlauth_module.urlfetch(ctx, fetch))  # type: ignore[arg-type]
        self.assertEqual(ctx.emitted[1:], [UrlFetchData(url, b"body\r\n"), UrlFetchData(rump, None)])
        run_now(urlauth_module.resetkey(ctx, parse_command([LineFragment(b"r RESETKEY INBOX")])))  # type: ignore[arg-type]
        run_now(urlauth_module.urlfetch(ctx, fetch))  # type: ignore[arg-type]
        self.assertEqual(ctx.emitted[3:], [UrlFetchData(url, None), UrlFetchData(rump, None)])

    def test_other_user(self) -> None:
        """authorized_mailbox gives bob's mailbox only with bob's verifier."""
        ctx = HandlerContext()
        bob = self.successResultOf(ctx.provider.store_for(BOB))
        inbox = bob._boxes["INBOX"]
        key = run_now(_deferred(bob.urlauth_key("INBOX", inbox.uidvalidity, True)))
        rump = f"imap://bob%40example.test@{HOST}/INBOX/;UID=1;URLAUTH=anonymous"
        url = parse_url(f"{rump}:internal:{urlauth_module.sign(key, rump)}")
        self.assertIs(run_now(urlauth_module.authorized_mailbox(ctx, url)), inbox)  # type: ignore[arg-type]
        forged = parse_url(f"{rump}:internal:{urlauth_module.sign(b'x' * 32, rump)}")
        self.assertRaises(
            urlauth_module.UnauthorizedURL, run_now, urlauth_module.authorized_mailbox(ctx, forged)
        )  # type: ignore[arg-type]


async def _deferred(d: Any) -> Any:
    return await d


class TwoUsers:
    """alice and bob (bob cannot log in: no credentials)."""

    def get_credentials(self, username: str) -> defer.Deferred[Any]:
        return defer.succeed(CREDENTIALS if username == USER else None)

    def canonical_user(self, username: str) -> defer.Deferred[str | None]:
        return defer.succeed(username if username in (USER, BOB) else None)


class URLAuthServerTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.authenticator = Authenticator(TwoUsers(), clock=self.clock)  # type: ignore[arg-type]

    def session(self) -> tuple[Any, Any]:
        proto, transport = self.connect(hostname=HOST)
        self.assertTrue(self.send(proto, transport, LOGIN).startswith(b"a1 OK"))
        return proto, transport

    def genurlauth(self, proto: Any, transport: Any, rump: str) -> str:
        out = self.send(proto, transport, b'g GENURLAUTH "%s" INTERNAL\r\n' % rump.encode())
        m = re.match(rb'\* GENURLAUTH "([^"]+)"\r\ng OK GENURLAUTH completed\r\n\Z', out)
        assert m is not None, out
        return m.group(1).decode()

    def urlfetch(self, proto: Any, transport: Any, url: str) -> bytes:
        out = self.send(proto, transport, b'f URLFETCH "%s"\r\n' % url.encode())
        self.assertTrue(out.endswith(b"f OK URLFETCH completed\r\n"), out)
        return out[: -len(b"f OK URLFETCH completed\r\n")]

    def bob_url(self, access: str, section: str = "") -> str:
        """A URL of bob's message 1, signed with bob's key (as bob's GENURLAUTH would)."""
        store = self.successResultOf(self.stores.store_for(BOB))
        inbox = self.successResultOf(store.get_mailbox("INBOX"))
        if not self.successResultOf(inbox.list_messages()):
            self.successResultOf(inbox.append(BOB_MESSAGE))
        key = self.successResultOf(store.urlauth_key("INBOX", inbox.uidvalidity, True))
        rump = f"imap://bob%40example.test@{HOST}/INBOX/;UID=1{section};URLAUTH={access}"
        return f"{rump}:internal:{urlauth_module.sign(key, rump)}"

    def test_advertised(self) -> None:
        """RFC 4467 section 2: the URLAUTH capability."""
        self.assertIn("URLAUTH", capabilities())

    def test_generate_and_fetch(self) -> None:
        """Section 6.1 and 6.3: GENURLAUTH adds :internal:verifier; URLFETCH gives the data; section and partial apply."""
        proto, transport = self.session()
        rump = f"imap://alice%40example.test@{HOST}/INBOX;UIDVALIDITY={self.mailbox.uidvalidity}/;UID=1;URLAUTH=user+{USER}"
        url = self.genurlauth(proto, transport, rump)
        self.assertTrue(re.fullmatch(re.escape(rump) + ":internal:[0-9a-f]{64}", url), url)
        self.assertEqual(self.genurlauth(proto, transport, rump), url)  # same key, same verifier
        expected = b'* URLFETCH "%s" {%d}\r\n%s\r\n' % (url.encode(), len(MESSAGES[0]), MESSAGES[0])
        self.assertEqual(self.urlfetch(proto, transport, url), expected)
        rump = f"imap://alice%40example.test@{HOST}/INBOX/;UID=2/;SECTION=TEXT/;PARTIAL=0.6;URLAUTH=authuser"
        url = self.genurlauth(proto, transport, rump)
        self.assertEqual(self.urlfetch(proto, transport, url), b'* URLFETCH "%s" "second"\r\n' % url.encode())
        self.assertEqual(self.flags(1), frozenset())  # no \Seen

    def test_fetch_refused_is_nil(self) -> None:
        """Section 6.3: NIL for a wrong verifier, a changed rump, an unsigned URL, a missing message, expiry."""
        proto, transport = self.session()
        base = f"imap://alice%40example.test@{HOST}/INBOX/;UID=1"
        url = self.genurlauth(proto, transport, base + ";URLAUTH=anonymous")
        gone = self.genurlauth(
            proto, transport, f"imap://alice%40example.test@{HOST}/INBOX/;UID=9;URLAUTH=anonymous"
        )
        soon = self.genurlauth(proto, transport, base + ";EXPIRE=2030-01-01T00:00:00Z;URLAUTH=anonymous")
        flipped = url[:-1] + ("0" if url[-1] != "0" else "1")
        for bad in (flipped, url.replace("UID=1", "UID=2"), base, "/INBOX/;UID=1", gone, "nonsense"):
            self.assertEqual(
                self.urlfetch(proto, transport, bad), b"* URLFETCH %s NIL\r\n" % serialize.astring(bad), bad
            )
        self.assertIn(b"{", self.urlfetch(proto, transport, soon))
        self.patch(urlauth_module, "now", lambda: datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
        self.assertEqual(self.urlfetch(proto, transport, soon), b'* URLFETCH "%s" NIL\r\n' % soon.encode())

    def test_access_identifiers(self) -> None:
        """Section 3: anonymous, authuser, user+name admit alice as the name says; submit+ admits nobody here."""
        proto, transport = self.session()
        for access, readable in (
            ("anonymous", True),
            ("authuser", True),
            (f"user+{USER}", True),
            (f"user+{BOB}", False),
            (f"submit+{USER}", False),
        ):
            url = self.bob_url(access)
            out = self.urlfetch(proto, transport, url)
            self.assertEqual(out.endswith(BOB_MESSAGE + b"\r\n"), readable, (access, out))

    def test_unknown_owner(self) -> None:
        """A URL of a user the directory does not know reads nothing (and makes no store)."""
        proto, transport = self.session()
        url = self.bob_url("anonymous").replace("bob%40example.test", "carol%40example.test")
        self.assertTrue(self.urlfetch(proto, transport, url).endswith(b" NIL\r\n"))

    def test_genurlauth_refused(self) -> None:
        """Section 6.1: NO [BADURL] for a URL that is not the user's own rump on this server; no URL given."""
        proto, transport = self.session()
        own = f"imap://alice%40example.test@{HOST}/INBOX/;UID=1"
        for rump, text in (
            (own + ";URLAUTH=anonymous X", None),
            (own, b"Not a URLAUTH URL rump"),
            (own + ";URLAUTH=anonymous:internal:" + "0" * 32, b"Not a URLAUTH URL rump"),
            (own.replace(HOST, "other.example"), b"The URL must name this server and the logged-in user"),
            (
                f"imap://{HOST}/INBOX/;UID=1;URLAUTH=anonymous",
                b"The URL must name this server and the logged-in user",
            ),
            (
                own.replace("alice", "bob") + ";URLAUTH=anonymous",
                b"The URL must name this server and the logged-in user",
            ),
            (own.replace("INBOX", "Nope") + ";URLAUTH=anonymous", b"No such mailbox"),
            (own.replace("INBOX", "INBOX;UIDVALIDITY=1") + ";URLAUTH=anonymous", b"UIDVALIDITY mismatch"),
            ("/INBOX/;UID=1;URLAUTH=anonymous", b"The URL must name this server and the logged-in user"),
        ):
            if text is None:
                out = self.send(proto, transport, b'g GENURLAUTH "%s"\r\n' % rump.encode())
                self.assertTrue(out.startswith(b"g BAD "), out)
                continue
            out = self.send(proto, transport, b'g GENURLAUTH "%s" INTERNAL\r\n' % rump.encode())
            self.assertEqual(out, b"g NO [BADURL %s] %s\r\n" % (rump.encode(), text), rump)
        out = self.send(proto, transport, b'g GENURLAUTH "%s;URLAUTH=anonymous" OTHER\r\n' % own.encode())
        self.assertEqual(
            out, b"g NO [BADURL %s;URLAUTH=anonymous] Unsupported URLAUTH mechanism\r\n" % own.encode()
        )
        out = self.send(
            proto,
            transport,
            b'g GENURLAUTH "%s;URLAUTH=anonymous" INTERNAL "%s" INTERNAL\r\n' % (own.encode(), own.encode()),
        )
        self.assertEqual(out, b"g NO [BADURL %s] Not a URLAUTH URL rump\r\n" % own.encode())

    def test_resetkey(self) -> None:
        """Section 6.2: RESETKEY mailbox (OK [URLMECH INTERNAL]) or all; the URLs signed before stop working."""
        self.successResultOf(self.store.create_mailbox("Drafts"))
        drafts = self.successResultOf(self.store.get_mailbox("Drafts"))
        self.successResultOf(drafts.append(b"Subject: d\r\n\r\nd\r\n"))
        proto, transport = self.session()
        inbox_url = self.genurlauth(
            proto, transport, f"imap://alice%40example.test@{HOST}/INBOX/;UID=1;URLAUTH=authuser"
        )
        drafts_url = self.genurlauth(
            proto, transport, f"imap://alice%40example.test@{HOST}/Drafts/;UID=1;URLAUTH=authuser"
        )
        out = self.send(proto, transport, b"r RESETKEY Drafts INTERNAL\r\n")
        self.assertEqual(out, b"r OK [URLMECH INTERNAL] Keys removed\r\n")
        self.assertTrue(self.urlfetch(proto, transport, drafts_url).endswith(b" NIL\r\n"))
        self.assertFalse(self.urlfetch(proto, transport, inbox_url).endswith(b" NIL\r\n"))
        self.assertEqual(self.send(proto, transport, b"r RESETKEY\r\n"), b"r OK All keys removed\r\n")
        self.assertTrue(self.urlfetch(proto, transport, inbox_url).endswith(b" NIL\r\n"))
        self.assertEqual(
            self.send(proto, transport, b"r RESETKEY Nope\r\n"), b"r NO [NONEXISTENT] No such mailbox\r\n"
        )
        out = self.send(proto, transport, b"r RESETKEY INBOX OTHER\r\n")
        self.assertEqual(out, b"r NO Unsupported URLAUTH mechanism\r\n")

    def test_not_authenticated(self) -> None:
        """The three commands belong to the authenticated state."""
        proto, transport = self.connect(hostname=HOST)
        for line in (b'x GENURLAUTH "u" INTERNAL\r\n', b"x RESETKEY\r\n", b'x URLFETCH "u"\r\n'):
            self.assertTrue(self.send(proto, transport, line).startswith(b"x BAD "), line)

    def test_catenate_with_signed_url(self) -> None:
        """RFC 4469 with RFC 4467: CATENATE takes a URLAUTH URL of another user's mail that admits alice."""
        proto, transport = self.session()
        self.send(proto, transport, b"s SELECT INBOX\r\n")
        good = self.bob_url("authuser", "/;SECTION=TEXT")
        out = self.send(
            proto, transport, b'a APPEND INBOX CATENATE (URL "%s" TEXT {2+}\r\nok)\r\n' % good.encode()
        )
        self.assertTrue(out.endswith(b"APPEND completed\r\n"), out)
        new = self.successResultOf(self.mailbox.read_message(3))
        self.assertEqual(new, b"bob's text\r\nok")
        bad = self.bob_url(f"user+{BOB}")
        out = self.send(proto, transport, b'a APPEND INBOX CATENATE (URL "%s")\r\n' % bad.encode())
        self.assertEqual(out, b"a NO [BADURL %s] URLAUTH URL not authorized\r\n" % bad[:200].encode())


class EndToEndTests(IMAPRestartCase):
    """imaplib against the real service on Maildir: GENURLAUTH, restart, URLFETCH."""

    user = USER
    password = "imap secret"

    @defer.inlineCallbacks
    def test_urlauth_across_restart(self) -> Any:
        self.patch(
            imaplib,
            "Commands",
            {**imaplib.Commands, "GENURLAUTH": ("AUTH", "SELECTED"), "URLFETCH": ("AUTH", "SELECTED")},
        )
        data_dir = os.path.abspath(self.mktemp())
        server = yield self.start(data_dir)

        def generate() -> str:
            c = self.client(server)
            try:
                assert "URLAUTH" in c.capabilities
                c.append("INBOX", "", None, MESSAGES[0])
                rump = f'"imap://alice%40example.test@{HOST}/INBOX/;UID=1/;SECTION=HEADER;URLAUTH=authuser"'
                typ, data = c._simple_command("GENURLAUTH", rump, "INTERNAL")
                assert typ == "OK", data
                _, urls = c._untagged_response(typ, data, "GENURLAUTH")
                return urls[0].decode().strip('"')
            finally:
                c.logout()

        url = yield deferToThread(generate)
        self.assertTrue(re.fullmatch(r"imap://.*;URLAUTH=authuser:internal:[0-9a-f]{64}", url), url)
        yield server.stopService()
        server2 = yield self.start(data_dir)

        def fetch() -> Any:
            c = self.client(server2)
            try:
                typ, data = c._simple_command("URLFETCH", f'"{url}"')
                assert typ == "OK", data
                return c._untagged_response(typ, data, "URLFETCH")[1]
            finally:
                c.logout()

        data = yield deferToThread(fetch)
        self.assertEqual(data[0][1], MESSAGES[0].split(b"\r\n\r\n")[0] + b"\r\n\r\n")
