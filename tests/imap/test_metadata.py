"""
METADATA (RFC 5464): the parser's syntax (section 5) and entry name rules
(section 3.2), the METADATA response, the handlers driven without Twisted
(:class:`FakeMetadataContext`), the adapter on StringTransport (the setup
of tests/imap/test_server.py: the memory store), and an end-to-end check
with imaplib against the real service on Maildir, restarted in between.
"""

from __future__ import annotations

import imaplib
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.e2e._server import IMAPRestartCase
from tests.imap.test_server import LOGIN, ServerTestCase
from txmail.config import load_config
from txmail.errors import ConfigError, NoSuchMailbox
from txmail.imap import responses, serialize
from txmail.imap.commands import capabilities
from txmail.imap.commands.context import run_now
from txmail.imap.commands.metadata import getmetadata, select_entries, setmetadata
from txmail.imap.fragment import CommandFragments, CommandFramer
from txmail.imap.parser import MAX_ENTRY_NAME, MAX_METADATA_ENTRIES, ParseError, parse_command
from txmail.imap.responses import Done, No, Response
from txmail.imap.session import IMAPLimits, IMAPSession
from txmail.imap.types import Command, GetMetadata, SetMetadata
from txmail.interfaces import IMetadataStore
from txmail.model import AnnotationsChanged, FolderInfo, SpecialUse
from txmail.store.memory import MemoryProvider

__all__: list[str] = []


def parse(line: bytes, *literals: bytes, binary: bool = False) -> Command:
    """
    Parse *line*, each ``{}`` in it a non-synchronizing literal (a literal8
    with *binary*) of the next of *literals*, through the real framer.
    """
    data = line
    for literal in literals:
        marker = b"%s{%d+}\r\n" % (b"~" if binary else b"", len(literal))
        data = data.replace(b"{}", marker + literal, 1)
    framer = CommandFramer()
    framer.receive_data(data + b"\r\n")
    frame = framer.next_event()
    assert isinstance(frame, CommandFragments), frame
    return parse_command(frame.fragments)


class ParserTests(SynchronousTestCase):
    """RFC 5464 section 5 (formal syntax) and section 3.2 (entry names)."""

    def test_getmetadata(self) -> None:
        """getmetadata = "GETMETADATA" [SP getmetadata-options] SP mailbox SP entries."""
        self.assertEqual(
            parse(b'a GETMETADATA "" /shared/comment').args, GetMetadata("", ("/shared/comment",))
        )
        args = parse(
            b"a GETMETADATA (MAXSIZE 1024 DEPTH infinity) INBOX (/Private/Comment /shared /private/comment)"
        ).args
        self.assertEqual(args, GetMetadata("INBOX", ("/private/comment", "/shared"), 1024, None))
        args = parse(b"a getmetadata (depth 1) inbox /private/filters/values").args
        self.assertEqual(args, GetMetadata("INBOX", ("/private/filters/values",), None, 1))

    def test_getmetadata_bad_options(self) -> None:
        """Options are MAXSIZE number and DEPTH 0/1/infinity; others, repeats and () are BAD."""
        for line in (
            b"a GETMETADATA (DEPTH 2) INBOX /private/x",
            b"a GETMETADATA (MAXSIZE 1 MAXSIZE 2) INBOX /private/x",
            b"a GETMETADATA (FOO 1) INBOX /private/x",
            b"a GETMETADATA () INBOX /private/x",
            b"a GETMETADATA (MAXSIZE -1) INBOX /private/x",
            b"a GETMETADATA INBOX",
            b"a GETMETADATA INBOX ()",
        ):
            self.assertRaises(ParseError, parse, line)

    def test_entry_names(self) -> None:
        """
        Section 3.2: no "*" or "%", ASCII without controls, no "//", no
        trailing "/", first component /private or /shared: else BAD.
        """
        for entry in (
            b"/comment",
            b"private/comment",
            b'"/private/*"',
            b'"/private/%"',
            b"/private//comment",
            b"/private/comment/",
            b"/",
            b'"/private/\xc3\xa9"',
            b'"/private/a\tb"',
            b"/privately/x",
        ):
            self.assertRaises(ParseError, parse, b"a GETMETADATA INBOX " + entry)
            self.assertRaises(ParseError, parse, b"a SETMETADATA INBOX (" + entry + b" NIL)")
        self.assertRaises(ParseError, parse, b"a GETMETADATA INBOX {}", b"/private/" + b"x" * 1016)
        name = b"/private/" + b"x" * (MAX_ENTRY_NAME - 9)
        self.assertEqual(parse(b"a GETMETADATA INBOX " + name).args.entries, (name.decode(),))  # type: ignore[union-attr]

    def test_setmetadata(self) -> None:
        """setmetadata = "SETMETADATA" SP mailbox SP entry-values; value = nstring / literal8."""
        args = parse(b'a SETMETADATA INBOX (/Private/Comment "hi" /shared/comment NIL)').args
        self.assertEqual(args, SetMetadata("INBOX", (("/private/comment", b"hi"), ("/shared/comment", None))))
        args = parse(b"a SETMETADATA INBOX (/private/comment {})", b"a\r\nb\xff").args
        self.assertEqual(args, SetMetadata("INBOX", (("/private/comment", b"a\r\nb\xff"),)))
        args = parse(b"a SETMETADATA INBOX (/private/comment {})", b"\x00\x01\x02", binary=True).args
        self.assertEqual(args, SetMetadata("INBOX", (("/private/comment", b"\x00\x01\x02"),)))

    def test_setmetadata_bad(self) -> None:
        """
        Section 3.2: an entry to set has 2 components at least, 4 under
        vendor; a NUL needs a literal8; the pairs are parenthesised.
        """
        for line in (
            b"a SETMETADATA INBOX (/private NIL)",
            b"a SETMETADATA INBOX (/shared/vendor/acme NIL)",
            b"a SETMETADATA INBOX /private/comment NIL",
            b"a SETMETADATA INBOX ()",
            b"a SETMETADATA INBOX (/private/comment)",
        ):
            self.assertRaises(ParseError, parse, line)
        self.assertRaises(ParseError, parse, b"a SETMETADATA INBOX (/private/comment {})", b"\x00\x01\x02")
        many = b" ".join(b"/private/e%d NIL" % i for i in range(MAX_METADATA_ENTRIES + 1))
        self.assertRaises(ParseError, parse, b"a SETMETADATA INBOX (" + many + b")")
        names = b" ".join(b"/private/e%d" % i for i in range(MAX_METADATA_ENTRIES + 1))
        self.assertRaises(ParseError, parse, b"a GETMETADATA INBOX (" + names + b")")
        names = b" ".join(b"/private/e%d" % i for i in range(MAX_METADATA_ENTRIES))
        self.assertEqual(
            len(parse(b"a GETMETADATA INBOX (" + names + b")").args.entries), MAX_METADATA_ENTRIES
        )  # type: ignore[union-attr]
        args = parse(b"a SETMETADATA INBOX (/shared/vendor/acme/x NIL)").args
        self.assertEqual(args, SetMetadata("INBOX", (("/shared/vendor/acme/x", None),)))


class RenderTests(SynchronousTestCase):
    def test_metadata_response(self) -> None:
        """Section 4.4.1: * METADATA mailbox (entry value ...); NIL, a literal, a literal8 for a NUL."""
        out = serialize.render_all(
            [
                responses.MetadataData(
                    "",
                    (("/shared/comment", b"Shared comment"), ("/private/x", None), ("/private/b", b"a\x00b")),
                ),
                responses.MetadataData("INBOX", (("/private/comment", b"\xff"),)),
            ]
        )
        self.assertEqual(
            b"".join(out),
            b'* METADATA "" (/shared/comment "Shared comment" /private/x NIL /private/b ~{3}\r\na\x00b)\r\n'
            b"* METADATA INBOX (/private/comment {1}\r\n\xff)\r\n",
        )

    def test_unsolicited_form(self) -> None:
        """Section 4.4.2: * METADATA mailbox entry ... (names only)."""
        out = serialize.render_all(
            [responses.MetadataNames("INBOX", ("/shared/comment", "/private/comment"))]
        )
        self.assertEqual(out, [b"* METADATA INBOX /shared/comment /private/comment\r\n"])


class SelectTests(SynchronousTestCase):
    ENTRIES = {
        "/private/filters/values": b"v",
        "/private/filters/values/small": b"SMALLER 5000",
        "/private/filters/values/boss": b"FROM boss",
        "/private/filters/values/boss/deep": b"x",
    }

    def test_depth(self) -> None:
        """Section 4.2.2: DEPTH 0 the entry (NIL when missing), 1 its children, infinity all below."""
        self.assertEqual(select_entries(self.ENTRIES, ["/private/nothing"], 0), [("/private/nothing", None)])
        self.assertEqual(
            select_entries(self.ENTRIES, ["/private/filters/values"], 1),
            [
                ("/private/filters/values", b"v"),
                ("/private/filters/values/boss", b"FROM boss"),
                ("/private/filters/values/small", b"SMALLER 5000"),
            ],
        )
        self.assertEqual(
            [n for n, _ in select_entries(self.ENTRIES, ["/private/filters"], None)],
            [
                "/private/filters/values",
                "/private/filters/values/boss",
                "/private/filters/values/boss/deep",
                "/private/filters/values/small",
            ],
        )
        # No NIL for a missing entry asked with a depth; each entry once.
        self.assertEqual(select_entries(self.ENTRIES, ["/private/f"], 1), [])
        self.assertEqual(
            len(
                select_entries(
                    self.ENTRIES, ["/private/filters/values", "/private/filters/values/boss"], None
                )
            ),
            4,
        )


@implementer(IMetadataStore)
class FakeMetadataStore:
    """An IMetadataStore whose methods answer at once with plain values."""

    def __init__(self) -> None:
        self.annotations: dict[str, dict[str, bytes]] = {"": {}, "INBOX": {}, "Sent": {}}

    def get_annotations(self, mailbox: str) -> dict[str, bytes]:
        if mailbox not in self.annotations:
            raise NoSuchMailbox(mailbox)
        return dict(self.annotations[mailbox])

    def set_annotations(self, mailbox: str, changes: dict[str, bytes | None]) -> None:
        entries = self.annotations[mailbox]
        for name, value in changes.items():
            if value is None:
                entries.pop(name, None)
            else:
                entries[name] = value

    def annotation_count(self) -> int:
        return sum(len(e) for e in self.annotations.values())

    def add_annotation_listener(self, listener: Any) -> Any:
        return lambda: None

    def list_mailboxes(self, pattern: str = "*") -> list[FolderInfo]:
        roles = {"Sent": SpecialUse.SENT}
        return [FolderInfo(n, roles.get(n)) for n in self.annotations if n and n == pattern]


class FakeMetadataContext:
    """A CommandContext over :class:`FakeMetadataStore` that keeps what is emitted."""

    def __init__(self, **limits: Any) -> None:
        self.session = IMAPSession(limits=IMAPLimits(**limits))
        self.store: Any = FakeMetadataStore()
        self.mailbox: Any = None
        self.quotas = None
        self.emitted: list[Response] = []

    def emit(self, *responses: Response) -> None:
        self.emitted.extend(responses)


def get(ctx: FakeMetadataContext, line: bytes) -> Done:
    return run_now(getmetadata(ctx, parse(line)))  # type: ignore[arg-type]


def set_(ctx: FakeMetadataContext, line: bytes, *literals: bytes) -> Done:
    return run_now(setmetadata(ctx, parse(line, *literals)))  # type: ignore[arg-type]


class HandlerTests(SynchronousTestCase):
    def test_set_and_get(self) -> None:
        """Sections 4.2 and 4.3: SETMETADATA sets and removes (NIL); GETMETADATA answers one METADATA."""
        ctx = FakeMetadataContext()
        self.assertEqual(
            set_(ctx, b'a SETMETADATA INBOX (/private/comment "mine" /shared/comment "ours")'), Done()
        )
        self.assertEqual(ctx.emitted, [])  # section 4.3: no METADATA response
        self.assertEqual(
            get(ctx, b"a GETMETADATA INBOX (/shared/comment /private/comment /private/none)"), Done()
        )
        self.assertEqual(
            ctx.emitted,
            [
                responses.MetadataData(
                    "INBOX",
                    (("/shared/comment", b"ours"), ("/private/comment", b"mine"), ("/private/none", None)),
                )
            ],
        )
        set_(ctx, b"a SETMETADATA INBOX (/private/comment NIL)")
        self.assertEqual(ctx.store.annotations["INBOX"], {"/shared/comment": b"ours"})

    def test_maxsize_longentries(self) -> None:
        """Section 4.2.1: longer values are left out; OK [METADATA LONGENTRIES n], n the longest."""
        ctx = FakeMetadataContext()
        ctx.store.annotations["INBOX"] = {
            "/shared/comment": b"x" * 2199,
            "/private/comment": b"short",
            "/private/a": b"y" * 1500,
        }
        done = get(ctx, b"a GETMETADATA (MAXSIZE 1024) INBOX (/shared/comment /private/comment /private/a)")
        self.assertEqual(done, Done(code="METADATA LONGENTRIES 2199"))
        self.assertEqual(ctx.emitted, [responses.MetadataData("INBOX", (("/private/comment", b"short"),))])
        ctx.emitted.clear()
        self.assertEqual(get(ctx, b"a GETMETADATA (MAXSIZE 5000) INBOX /shared/comment"), Done())
        self.assertEqual(len(ctx.emitted), 1)
        ctx.emitted.clear()
        self.assertEqual(
            get(ctx, b"a GETMETADATA (MAXSIZE 10) INBOX /shared/comment"),
            Done(code="METADATA LONGENTRIES 2199"),
        )
        self.assertEqual(ctx.emitted, [])

    def test_server_entries(self) -> None:
        """Section 3.2.1.1: /shared/admin and /shared/comment from the settings; /private ones the user's."""
        ctx = FakeMetadataContext(metadata_admin="mailto:postmaster@example.test", metadata_comment="Be nice")
        set_(ctx, b'a SETMETADATA "" (/private/vendor/acme/theme "dark")')
        get(ctx, b'a GETMETADATA (DEPTH infinity) "" (/shared /private)')
        self.assertEqual(
            ctx.emitted,
            [
                responses.MetadataData(
                    "",
                    (
                        ("/shared/admin", b"mailto:postmaster@example.test"),
                        ("/shared/comment", b"Be nice"),
                        ("/private/vendor/acme/theme", b"dark"),
                    ),
                )
            ],
        )

    def test_read_only_entries(self) -> None:
        """
        Section 3.2.1.1: /shared/admin is always read-only (NO [CANNOT]);
        other server /shared entries are the administrator's (section 3.3:
        NO [PERMISSIONDENIED]); RFC 6154 section 4: /private/specialuse is
        the role, computed.
        """
        ctx = FakeMetadataContext()
        e = self.assertRaises(No, set_, ctx, b'a SETMETADATA "" (/shared/admin "mailto:me@example.test")')
        self.assertEqual(e.code, "CANNOT")
        e = self.assertRaises(No, set_, ctx, b'a SETMETADATA "" (/private/x "1" /shared/comment "hello")')
        self.assertEqual(e.code, "PERMISSIONDENIED")
        e = self.assertRaises(No, set_, ctx, b'a SETMETADATA Sent (/private/specialuse "\\\\Junk")')
        self.assertEqual(e.code, "CANNOT")
        self.assertEqual(ctx.store.annotations, {"": {}, "INBOX": {}, "Sent": {}})  # all or none
        get(ctx, b"a GETMETADATA Sent /private/specialuse")
        get(ctx, b"a GETMETADATA INBOX /private/specialuse")
        self.assertEqual(
            ctx.emitted,
            [
                responses.MetadataData("Sent", (("/private/specialuse", b"\\Sent"),)),
                responses.MetadataData("INBOX", (("/private/specialuse", None),)),
            ],
        )

    def test_maxsize_of_set(self) -> None:
        """Section 4.3: a value over the limit is NO [METADATA MAXSIZE n]; nothing is set."""
        ctx = FakeMetadataContext(metadata_max_size=1024)
        e = self.assertRaises(
            No, set_, ctx, b'a SETMETADATA INBOX (/private/a "ok" /private/comment {})', b"x" * 1025
        )
        self.assertEqual(e.code, "METADATA MAXSIZE 1024")
        self.assertEqual(ctx.store.annotations["INBOX"], {})
        set_(ctx, b"a SETMETADATA INBOX (/private/comment {})", b"x" * 1024)
        self.assertEqual(len(ctx.store.annotations["INBOX"]["/private/comment"]), 1024)

    def test_toomany(self) -> None:
        """
        Section 4.3: past the per-user number of entries, NO [METADATA
        TOOMANY], nothing set; replacing or removing entries is fine.
        """
        ctx = FakeMetadataContext(metadata_max_entries=3)
        set_(ctx, b'a SETMETADATA INBOX (/private/a "1" /private/b "2")')
        set_(ctx, b'a SETMETADATA "" (/private/c "3")')
        e = self.assertRaises(No, set_, ctx, b'a SETMETADATA Sent (/private/d "4")')
        self.assertEqual(e.code, "METADATA TOOMANY")
        self.assertEqual(ctx.store.annotations["Sent"], {})
        set_(ctx, b'a SETMETADATA INBOX (/private/a "one" /private/b NIL /private/e "5")')
        self.assertEqual(ctx.store.annotations["INBOX"], {"/private/a": b"one", "/private/e": b"5"})

    def test_no_such_mailbox(self) -> None:
        """Section 3.3: a mailbox that does not exist: NO [NONEXISTENT]."""
        ctx = FakeMetadataContext()
        e = self.assertRaises(No, get, ctx, b"a GETMETADATA Nope /private/comment")
        self.assertEqual(e.code, "NONEXISTENT")
        e = self.assertRaises(No, set_, ctx, b'a SETMETADATA Nope (/private/comment "x")')
        self.assertEqual(e.code, "NONEXISTENT")

    def test_store_without_metadata(self) -> None:
        """A store without IMetadataStore: NO [CANNOT] (and METADATA is not advertised, see AdapterTests)."""
        ctx = FakeMetadataContext()
        ctx.store = object()
        e = self.assertRaises(No, get, ctx, b"a GETMETADATA INBOX /private/comment")
        self.assertEqual(e.code, "CANNOT")


class PlainStore:
    """A memory store seen through an object that does not provide IMetadataStore."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "annotation" in name:
            raise AttributeError(name)  # not zope's __provides__ either
        return getattr(self._store, name)


class PlainProvider:
    def __init__(self, provider: MemoryProvider) -> None:
        self.provider = provider

    def store_for(self, user: str) -> defer.Deferred[PlainStore]:
        return self.provider.store_for(user).addCallback(PlainStore)


class AdapterTests(ServerTestCase):
    """Through the IMAP adapter on StringTransport, memory store."""

    def test_advertised(self) -> None:
        """Section 1: METADATA (server and mailbox entries); not METADATA-SERVER beside it."""
        self.assertIn("METADATA", capabilities())
        self.assertNotIn("METADATA-SERVER", capabilities())
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"c1 CAPABILITY\r\n")
        self.assertIn(b" METADATA", out)

    def test_set_get_wire(self) -> None:
        """Sections 4.2 to 4.4: the commands and the response as written."""
        proto, transport = self.login(select=None)
        out = self.send(
            proto,
            transport,
            b'm1 SETMETADATA INBOX (/private/comment {21+}\r\nMy comment\r\ntwo lines /shared/comment "Sunny")\r\n',
        )
        self.assertEqual(out, b"m1 OK SETMETADATA completed\r\n")
        out = self.send(proto, transport, b"m2 GETMETADATA INBOX (/private/comment /shared/comment)\r\n")
        self.assertEqual(
            out,
            b'* METADATA INBOX (/private/comment {21}\r\nMy comment\r\ntwo lines /shared/comment "Sunny")\r\n'
            b"m2 OK GETMETADATA completed\r\n",
        )
        out = self.send(
            proto, transport, b"m3 GETMETADATA (MAXSIZE 5) INBOX (/private/comment /shared/comment)\r\n"
        )
        self.assertEqual(
            out,
            b'* METADATA INBOX (/shared/comment "Sunny")\r\nm3 OK [METADATA LONGENTRIES 21] GETMETADATA completed\r\n',
        )
        out = self.send(proto, transport, b"m4 GETMETADATA INBOX /private/*\r\n")
        self.assertTrue(out.startswith(b"m4 BAD "), out)
        out = self.send(proto, transport, b"m5 GETMETADATA Nope /private/comment\r\n")
        self.assertEqual(out, b"m5 NO [NONEXISTENT] No such mailbox\r\n")
        # Valid in the selected state too (section 4.2).
        self.send(proto, transport, b"s1 SELECT INBOX\r\n")
        out = self.send(proto, transport, b'm6 GETMETADATA "" /private/comment\r\n')
        self.assertEqual(out, b'* METADATA "" (/private/comment NIL)\r\nm6 OK GETMETADATA completed\r\n')

    def test_invalid_mailbox_name(self) -> None:
        """RFC 3501 section 5.1.3: a name that is not modified UTF-7 is NO, not BAD."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"m1 GETMETADATA &Jjo /private/comment\r\n")
        self.assertTrue(out.startswith(b"m1 NO [NONEXISTENT] "), out)
        out = self.send(proto, transport, b'm2 SETMETADATA &Jjo (/private/comment "x")\r\n')
        self.assertTrue(out.startswith(b"m2 NO [CANNOT] "), out)

    def test_utf8_names(self) -> None:
        """RFC 6855 section 3: after ENABLE UTF8=ACCEPT the METADATA response names the mailbox in UTF-8."""
        self.successResultOf(self.store.create_mailbox("Büro"))
        proto, transport = self.login(select=None)
        self.send(proto, transport, b"e1 ENABLE UTF8=ACCEPT\r\n")
        out = self.send(proto, transport, 'm1 GETMETADATA "Büro" /private/comment\r\n'.encode())
        self.assertEqual(
            out, '* METADATA "Büro" (/private/comment NIL)\r\nm1 OK GETMETADATA completed\r\n'.encode()
        )

    def test_not_authenticated(self) -> None:
        """Sections 4.2 and 4.3: the commands need the authenticated state."""
        proto, transport = self.connect()
        out = self.send(proto, transport, b"m1 GETMETADATA INBOX /private/comment\r\n")
        self.assertTrue(out.startswith(b"m1 BAD "), out)

    def test_listener_hears_changes(self) -> None:
        """The store tells its annotation listeners (for NOTIFY, RFC 5465) the entries that changed."""
        heard: list[AnnotationsChanged] = []
        self.store.add_annotation_listener(heard.append)
        proto, transport = self.login(select=None)
        self.send(proto, transport, b'm1 SETMETADATA INBOX (/private/comment "a" /shared/comment NIL)\r\n')
        self.send(proto, transport, b'm2 SETMETADATA "" (/private/comment "b")\r\n')
        self.assertEqual(
            heard,
            [
                AnnotationsChanged("INBOX", ("/private/comment",)),
                AnnotationsChanged("", ("/private/comment",)),
            ],
        )

    def test_store_without_metadata(self) -> None:
        """A store without IMetadataStore: METADATA withheld from CAPABILITY after login."""
        proto, transport = self.connect(stores=PlainProvider(self.stores))
        self.send(proto, transport, LOGIN)
        out = self.send(proto, transport, b"c1 CAPABILITY\r\n")
        self.assertNotIn(b"METADATA", out)
        self.assertIn(b"QUOTA", out)
        out = self.send(proto, transport, b"m1 GETMETADATA INBOX /private/comment\r\n")
        self.assertTrue(out.startswith(b"m1 NO [CANNOT] "), out)
        # A later connection of the same factory knows it from the start.
        factory = proto.factory
        proto2 = factory.buildProtocol(None)
        from twisted.internet.testing import StringTransport

        t2 = StringTransport()
        proto2.makeConnection(t2)
        self.assertNotIn(b"METADATA", t2.value())


class ConfigTests(SynchronousTestCase):
    """The [imap] keys of METADATA: admin, comment, metadata_max_size, metadata_max_entries."""

    def test_defaults(self) -> None:
        s = load_config(None)
        self.assertEqual((s.imap_admin, s.imap_comment), (None, None))
        self.assertEqual((s.imap_metadata_max_size, s.imap_metadata_max_entries), (16384, 256))

    def test_values(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[imap]\nadmin = "tel:+1-555-0100"\ncomment = "Hi"\nmetadata_max_size = 1024\n')
        s = load_config(path)
        self.assertEqual(
            (s.imap_admin, s.imap_comment, s.imap_metadata_max_size), ("tel:+1-555-0100", "Hi", 1024)
        )

    def test_errors(self) -> None:
        """RFC 5464: admin is a URI; at least 1024 octets and 10 entries (section 4.1)."""
        for values in (
            {"imap_admin": "postmaster"},
            {"imap_admin": 5},
            {"imap_metadata_max_size": 1023},
            {"imap_metadata_max_entries": 9},
            {"imap_metadata_max_entries": True},
            {"imap_comment": ""},
        ):
            self.assertRaises(ConfigError, load_config, None, values)


USER = "alice@example.test"
PASSWORD = "metadata secret"

# imaplib knows neither command; teach it (what states they are valid in).
for _name in ("GETMETADATA", "SETMETADATA"):
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))


class EndToEndTests(IMAPRestartCase):
    """imaplib against the real service on Maildir: set, rename, restart, get; /shared/admin from [imap]."""

    user = USER
    password = PASSWORD
    config = '[imap]\nadmin = "mailto:postmaster@example.test"\nmetadata_max_entries = 10\n'

    @defer.inlineCallbacks
    def test_metadata_across_restart(self) -> Any:
        """Sections 4.1 to 4.4: entries survive a restart and follow RENAME; DELETE removes them."""
        data_dir = os.path.abspath(self.mktemp())
        server = yield self.start(data_dir)

        def first() -> dict[str, Any]:
            c = self.client(server)
            try:
                c.create("Work")
                set1 = c._simple_command(
                    "SETMETADATA", 'Work (/private/comment "my work" /shared/comment "ours")'
                )
                set2 = c._simple_command("SETMETADATA", '"" (/private/vendor/acme/theme "dark")')
                c.rename("Work", "Jobs")
                c.create("Gone")
                c._simple_command("SETMETADATA", 'Gone (/private/comment "bye")')
                c.delete("Gone")
                c.create("Gone")
                many = c._simple_command(
                    "SETMETADATA", "Gone (" + " ".join(f'/private/n{i} "{i}"' for i in range(8)) + ")"
                )
                return {"caps": c.capabilities, "set": (set1[0], set2[0]), "many": many}
            finally:
                c.logout()

        one = yield deferToThread(first)
        self.assertIn("METADATA", one["caps"])
        self.assertEqual(one["set"], ("OK", "OK"))
        self.assertEqual(one["many"][0], "NO")  # 3 kept + 8 new > 10
        self.assertIn(b"[METADATA TOOMANY]", one["many"][1][0])

        yield server.stopService()
        server2 = yield self.start(data_dir)

        def second() -> dict[str, Any]:
            c = self.client(server2)
            try:
                out = {}
                for key, args in (
                    ("jobs", "Jobs (/private/comment /shared/comment)"),
                    ("server", '(DEPTH infinity) "" (/shared /private)'),
                    ("gone", "Gone /private/comment"),
                ):
                    typ, _ = c._simple_command("GETMETADATA", args)
                    out[key] = (typ, c.response("METADATA")[1])
                return out
            finally:
                c.logout()

        two = yield deferToThread(second)
        self.assertEqual(two["jobs"], ("OK", [b'Jobs (/private/comment "my work" /shared/comment "ours")']))
        self.assertEqual(
            two["server"],
            (
                "OK",
                [b'"" (/shared/admin "mailto:postmaster@example.test" /private/vendor/acme/theme "dark")'],
            ),
        )
        self.assertEqual(two["gone"], ("OK", [b"Gone (/private/comment NIL)"]))
