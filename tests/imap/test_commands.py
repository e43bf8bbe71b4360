"""
Tests for the IMAP command layer (txmail.imap.commands): the table, the
capability list built from it, handlers driven without Twisted, and NOOP
picking up another program's Maildir file through the adapter.

Theory of operation
-------------------
Handlers are coroutines over a :class:`CommandContext`; :class:`FakeContext`
is one with a store whose methods answer with plain values, so
:func:`txmail.imap.commands.context.run_now` runs a handler to its end
without a reactor or a Deferred.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_server import LOGIN, USER, ServerTestCase
from txmail.errors import MailboxExists, NoSuchMailbox
from txmail.imap import responses, serialize
from txmail.imap.commands import COMMANDS, State, allowed, capabilities
from txmail.imap.commands.base import noop
from txmail.imap.commands.context import run_now
from txmail.imap.commands.mailboxes import create, status
from txmail.imap.commands.registry import CAPABILITIES
from txmail.imap.fragment import CommandFragments, CommandFramer
from txmail.imap.parser import parse_command
from txmail.imap.responses import Done, No, Response, StatusData
from txmail.imap.session import IMAPSession
from txmail.imap.types import Command
from txmail.imap.view import SelectedView
from txmail.model import MailboxStatus
from txmail.store.maildir import MaildirProvider

__all__: list[str] = []


def command(line: bytes) -> Command:
    """Parse one command line (no literals)."""
    framer = CommandFramer()
    framer.receive_data(line)
    frame = framer.next_event()
    assert isinstance(frame, CommandFragments)
    return parse_command(frame.fragments)


class RegistryTests(SynchronousTestCase):
    def test_every_command_has_a_handler(self) -> None:
        """Each command of the table is run by the adapter, answered by the session, or is a connection command."""
        for name, spec in COMMANDS.items():
            self.assertEqual(spec.name, name)
            self.assertTrue(spec.run or spec.answer or spec.connection, name)
            self.assertFalse(spec.connection and (spec.run or spec.answer), name)
            self.assertTrue(spec.states, name)

    def test_rfc3501_commands(self) -> None:
        """Every IMAP4rev1 command (RFC 3501 section 6) is in the table, in the states of section 3."""
        any_state = {"CAPABILITY", "NOOP", "LOGOUT"}
        not_auth = {"STARTTLS", "AUTHENTICATE", "LOGIN"}
        auth = {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB"}
        auth |= {"STATUS", "APPEND"}
        selected = {"CHECK", "CLOSE", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY"}
        self.assertTrue(any_state | not_auth <= allowed(State.NOT_AUTHENTICATED))
        self.assertTrue(any_state | auth <= allowed(State.AUTHENTICATED))
        self.assertTrue(any_state | auth | selected <= allowed(State.SELECTED))
        self.assertFalse(selected & allowed(State.AUTHENTICATED))
        self.assertFalse(not_auth & allowed(State.AUTHENTICATED))
        self.assertEqual(allowed(State.LOGOUT), frozenset())

    def test_capabilities_from_the_table(self) -> None:
        """Each command's capability is advertised, once, with the extensions that have no command."""
        caps = capabilities()
        self.assertEqual(len(caps), len(set(caps)))
        for spec in COMMANDS.values():
            if spec.capability is not None:
                self.assertIn(spec.capability, caps)
        for cap in ("IMAP4rev1", "UIDPLUS", "LIST-EXTENDED", "ESEARCH"):
            self.assertIn(cap, caps)
        self.assertEqual(caps[0], "IMAP4rev1")
        self.assertEqual(caps, tuple(CAPABILITIES))

    def test_session_advertises_the_table(self) -> None:
        """The session's CAPABILITY starts with the table's list, then APPENDLIMIT and the state's own."""
        session = IMAPSession(plaintext_auth="never", tls_available=True)
        caps = session.capabilities()
        self.assertEqual(caps[: len(capabilities())], capabilities())
        self.assertIn("STARTTLS", caps)
        self.assertIn("LOGINDISABLED", caps)

    def test_long_responses_stream(self) -> None:
        """
        FETCH, SEARCH, SORT and THREAD are written in batches under
        back-pressure; they withhold EXPUNGE with STORE.
        """
        self.assertEqual({n for n, s in COMMANDS.items() if s.streams}, {"FETCH", "SEARCH", "SORT", "THREAD"})
        self.assertEqual(
            {n for n, s in COMMANDS.items() if s.withholds_expunge},
            {"FETCH", "SEARCH", "STORE", "SORT", "THREAD"},
        )

    def test_every_response_type_renders(self) -> None:
        """serialize.render knows every response type of txmail.imap.responses."""
        kinds = [
            v
            for v in vars(responses).values()
            if isinstance(v, type) and issubclass(v, Response) and v is not Response
        ]
        self.assertTrue(kinds)
        for kind in kinds:
            self.assertIn(kind, serialize._RENDERERS, kind.__name__)
        self.assertRaises(TypeError, serialize.render, Response())


class FakeMailbox:
    """A mailbox whose methods answer at once with plain values."""

    name = "INBOX"
    uidvalidity = 7

    def __init__(self) -> None:
        self.refreshed = 0

    def status(self) -> MailboxStatus:
        return MailboxStatus(
            messages=3, recent=1, uidnext=10, uidvalidity=7, unseen=2, size=300, highest_modseq=1
        )

    def refresh_if_changed(self) -> None:
        self.refreshed += 1


class FakeStore:
    """A store whose methods answer at once with plain values, or raise."""

    def __init__(self) -> None:
        self.mailboxes: dict[str, FakeMailbox] = {"INBOX": FakeMailbox()}

    def create_mailbox(self, name: str) -> None:
        if name in self.mailboxes:
            raise MailboxExists(name)
        self.mailboxes[name] = FakeMailbox()

    def get_mailbox(self, name: str) -> FakeMailbox:
        if name not in self.mailboxes:
            raise NoSuchMailbox(name)
        return self.mailboxes[name]


class FakeContext:
    """A :class:`CommandContext` that keeps what is emitted."""

    def __init__(self) -> None:
        self.session = IMAPSession()
        self.store = FakeStore()
        self.mailbox: Any = None
        self.quotas = None
        self.emitted: list[Response] = []

    def emit(self, *responses: Response) -> None:
        self.emitted.extend(responses)


class HandlerTests(SynchronousTestCase):
    def test_create(self) -> None:
        """CREATE makes the mailbox; a second one gets NO [ALREADYEXISTS] from the store's error."""
        ctx = FakeContext()
        self.assertEqual(run_now(create(ctx, command(b"a1 CREATE Work\r\n"))), Done())  # type: ignore[arg-type]
        self.assertIn("Work", ctx.store.mailboxes)
        e = self.assertRaises(No, run_now, create(ctx, command(b"a2 CREATE Work\r\n")))  # type: ignore[arg-type]
        self.assertEqual((e.status, e.code), ("NO", "ALREADYEXISTS"))

    def test_status(self) -> None:
        """STATUS emits one typed response with the items asked, in order (RFC 3501 section 6.3.10)."""
        ctx = FakeContext()
        done = run_now(status(ctx, command(b"a1 STATUS INBOX (UNSEEN MESSAGES APPENDLIMIT)\r\n")))  # type: ignore[arg-type]
        self.assertEqual(done, Done())
        limit = ctx.session.limits.max_literal
        self.assertEqual(
            ctx.emitted, [StatusData("INBOX", (("UNSEEN", 2), ("MESSAGES", 3), ("APPENDLIMIT", limit)))]
        )
        self.assertEqual(
            b"".join(serialize.render(ctx.emitted[0])),
            b"* STATUS INBOX (UNSEEN 2 MESSAGES 3 APPENDLIMIT %d)\r\n" % limit,
        )

    def test_status_no_such_mailbox(self) -> None:
        """STATUS of a missing mailbox is NO [NONEXISTENT] (RFC 5530)."""
        e = self.assertRaises(No, run_now, status(FakeContext(), command(b"a1 STATUS Nope (MESSAGES)\r\n")))  # type: ignore[arg-type]
        self.assertEqual(e.code, "NONEXISTENT")

    def test_noop_refreshes(self) -> None:
        """NOOP with a mailbox selected asks the store for a cheap change check."""
        ctx = FakeContext()
        ctx.mailbox = ctx.store.mailboxes["INBOX"]
        ctx.session.view = SelectedView("INBOX", 7, [])
        self.assertEqual(run_now(noop(ctx, command(b"a1 NOOP\r\n"))), Done())  # type: ignore[arg-type]
        self.assertEqual(ctx.mailbox.refreshed, 1)

    def test_noop_deleted_mailbox(self) -> None:
        """NOOP does not look at a selected mailbox that was deleted."""
        ctx = FakeContext()
        ctx.mailbox = ctx.store.mailboxes["INBOX"]
        ctx.session.view = view = SelectedView("INBOX", 7, [])
        view.deleted = True
        run_now(noop(ctx, command(b"a1 NOOP\r\n")))  # type: ignore[arg-type]
        self.assertEqual(ctx.mailbox.refreshed, 0)


class MaildirNoopTests(ServerTestCase):
    """NOOP and CHECK see a file another program dropped, with the store's watcher off."""

    def setUp(self) -> None:
        super().setUp()
        self.root = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.root)
        self.stores = MaildirProvider(self.root, hostname="test.host", clock=self.clock, watch="off")  # type: ignore[assignment]
        self.inbox = os.path.join(self.root, "example.test", USER.split("@")[0])

    def drop(self, name: str) -> None:
        """Deliver a message into INBOX's new/ as another program would, moving new/'s time on."""
        new = os.path.join(self.inbox, "new")
        with open(os.path.join(new, name), "wb") as f:
            f.write(b"Subject: dropped\r\n\r\nbody\r\n")
        later = os.stat(new).st_mtime_ns + 5_000_000_000
        os.utime(new, ns=(later, later))

    def test_noop_sees_dropped_file(self) -> None:
        """RFC 3501 section 6.1.2: NOOP tells of a message another program put into new/."""
        proto, transport = self.connect()
        self.send(proto, transport, LOGIN)
        out = self.send(proto, transport, b"s1 SELECT INBOX\r\n")
        self.assertIn(b"* 0 EXISTS\r\n", out)
        self.drop("1700000000.M1P1.other:2,")
        out = self.send(proto, transport, b"n1 NOOP\r\n")
        self.assertEqual(out, b"* 1 EXISTS\r\n* 1 RECENT\r\nn1 OK NOOP completed\r\n")

    def test_check_sees_dropped_file(self) -> None:
        """RFC 3501 section 6.4.1: CHECK too."""
        proto, transport = self.connect()
        self.send(proto, transport, LOGIN)
        self.send(proto, transport, b"s1 SELECT INBOX\r\n")
        self.drop("1700000001.M1P1.other")
        out = self.send(proto, transport, b"c1 CHECK\r\n")
        self.assertTrue(out.startswith(b"* 1 EXISTS\r\n"), out)
        self.assertTrue(out.endswith(b"c1 OK CHECK completed\r\n"), out)


def _rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
