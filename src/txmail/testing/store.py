"""
The mailbox store conformance suite.

Every backend of :class:`txmail.interfaces.IMailStoreProvider` proves
itself by running these tests: combine :class:`MailStoreConformanceMixin`
with ``twisted.trial.unittest.TestCase`` and implement
:meth:`~MailStoreConformanceMixin.make_provider` (and, for a persistent
backend, :meth:`~MailStoreConformanceMixin.reopen_provider`)::

    from twisted.trial.unittest import TestCase

    from txmail.testing.store import MailStoreConformanceMixin

    class MyStoreTests(MailStoreConformanceMixin, TestCase):
        def make_provider(self):
            return MyProvider(self.mktemp())
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer
from zope.interface.verify import verifyObject

from txmail import mime
from txmail.errors import (
    InvalidMailboxName,
    InvalidScriptName,
    MailboxExists,
    MailboxNotEmpty,
    NoSuchMailbox,
    NoSuchMessage,
    NoSuchScript,
    ScriptActive,
    ScriptExists,
)
from txmail.interfaces import (
    IExpungedEmailIds,
    IExpungeHistory,
    IInboxDelivery,
    IMailbox,
    IMailStore,
    IMailStoreProvider,
    ISieveScripts,
)
from txmail.model import (
    ANSWERED,
    DELETED,
    FLAGGED,
    INBOX,
    SEEN,
    FlagMode,
    FlagsChanged,
    MailboxDeleted,
    MailboxStatus,
    MessageMetadata,
    MessagesAdded,
    MessagesExpunged,
    MessageSource,
    SpecialUse,
)
from txmail.testing.sources import file_source, pattern_digest, pattern_source, streamed_source

__all__ = [
    "ExpungedEmailIdsConformanceMixin",
    "InboxDeliveryConformanceMixin",
    "MailStoreConformanceMixin",
    "SieveScriptsConformanceMixin",
    "message",
]

USER = "alice@example.test"
OTHER = "bob@example.test"

Gen = Generator[Any, Any, None]


def message(n: int = 1, body: bytes = b"Hello.\r\n") -> bytes:
    """A small valid message, distinct per *n*."""
    return (
        b"From: Sender <sender@remote.test>\r\n"
        b"To: alice@example.test\r\n"
        b"Subject: message %d\r\n"
        b"Message-ID: <%d@remote.test>\r\n"
        b"\r\n" % (n, n)
    ) + body


class MailStoreConformanceMixin:
    """
    Behaviour every mailbox store must show (mix into a trial ``TestCase``).

    Subclasses implement :meth:`make_provider`; a persistent backend also
    implements :meth:`reopen_provider`.
    """

    # Provided by TestCase.
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIn: Any
    assertNotIn: Any
    assertIs: Any
    assertIsNone: Any
    assertIsInstance: Any
    assertGreater: Any
    assertFailure: Any
    mktemp: Any

    def make_provider(self) -> IMailStoreProvider:
        """Return a new, empty :class:`IMailStoreProvider`."""
        raise NotImplementedError

    def reopen_provider(self, provider: IMailStoreProvider) -> IMailStoreProvider:
        """Return a provider on the same storage as *provider* (a restart)."""
        return provider

    # -- helpers ------------------------------------------------------------

    @property
    def provider(self) -> IMailStoreProvider:
        if not hasattr(self, "_provider"):
            self._provider = self.make_provider()
        return self._provider

    def store(self, user: str = USER) -> defer.Deferred[IMailStore]:
        return self.provider.store_for(user)

    @defer.inlineCallbacks
    def inbox(self, user: str = USER) -> Generator[Any, Any, IMailbox]:
        store: IMailStore = yield self.store(user)
        box: IMailbox = yield store.get_mailbox(INBOX)
        return box

    @defer.inlineCallbacks
    def mailbox(self, name: str, user: str = USER) -> Generator[Any, Any, IMailbox]:
        store: IMailStore = yield self.store(user)
        with contextlib.suppress(MailboxExists):
            yield store.create_mailbox(name)
        box: IMailbox = yield store.get_mailbox(name)
        return box

    @defer.inlineCallbacks
    def fill(self, box: IMailbox, count: int, flags: tuple[str, ...] = ()) -> Generator[Any, Any, list[int]]:
        uids: list[int] = []
        for i in range(count):
            uids.append((yield box.append(message(i + 1), flags)))
        return uids

    def message_file(self, data: bytes, **kwargs: Any) -> MessageSource:
        """*data* as the SMTP server hands a message over: a source of a local file the caller owns."""
        return file_source(self.mktemp(), data, **kwargs)

    @staticmethod
    def record(box: IMailbox) -> list[Any]:  # the tests read each kind of change's own fields
        events: list[Any] = []
        box.add_listener(events.append)
        return events

    # -- the interfaces -----------------------------------------------------

    @defer.inlineCallbacks
    def test_interfaces(self) -> Gen:
        """Provider, store and mailbox provide their interfaces fully."""
        self.assertTrue(verifyObject(IMailStoreProvider, self.provider))
        store = yield self.store()
        self.assertTrue(verifyObject(IMailStore, store))
        self.assertEqual(store.user, USER)
        box = yield self.inbox()
        self.assertTrue(verifyObject(IMailbox, box))
        self.assertEqual(box.name, INBOX)
        self.assertTrue(0 < box.uidvalidity < 2**32)

    @defer.inlineCallbacks
    def test_same_store(self) -> Gen:
        """The same user gets a store that sees the same mailboxes."""
        a = yield self.provider.store_for(USER)
        b = yield self.provider.store_for(USER)
        self.assertTrue(a is b or a.user == b.user)

    @defer.inlineCallbacks
    def test_new_store_has_only_inbox(self) -> Gen:
        """A new user's store holds INBOX and nothing else."""
        folders = yield (yield self.store()).list_mailboxes("*")
        self.assertEqual([f.name for f in folders], [INBOX])
        self.assertTrue(folders[0].selectable)

    @defer.inlineCallbacks
    def test_methods_return_deferreds(self) -> Gen:
        """Every documented Deferred-returning method returns a Deferred."""
        store = yield self.store()
        box = yield self.inbox()
        uid = yield box.append(message())
        calls = [
            self.provider.store_for(USER),
            store.list_mailboxes("*"),
            store.subscriptions(),
            store.special_use_mailbox(SpecialUse.SENT),
            store.subscribe("X"),
            box.status(),
            box.list_messages(),
            box.open_message(uid),
            box.read_message(uid),
            box.get_metadata([uid]),
            box.set_flags([uid], [SEEN], FlagMode.ADD),
            box.expunge(),
            box.claim_recent(),
            box.refresh(),
        ]
        for d in calls:
            self.assertTrue(isinstance(d, defer.Deferred))
            result = yield d
            if hasattr(result, "close"):
                result.close()

    # -- append and read ------------------------------------------------------

    @defer.inlineCallbacks
    def test_append_and_read(self) -> Gen:
        """An appended message is listed with its size, flags and date, and reads back exactly."""
        box = yield self.inbox()
        data = message(7)
        uid = yield box.append(data, [SEEN, "$Label1"], 1_700_000_000.5)
        self.assertEqual(uid, 1)
        (info,) = yield box.list_messages()
        self.assertEqual(info.uid, uid)
        self.assertEqual(info.size, len(data))
        self.assertEqual(info.flags, frozenset({SEEN, "$Label1"}))
        self.assertEqual(info.internal_date, 1_700_000_000.5)
        self.assertGreater(info.modseq, 0)
        self.assertEqual((yield box.read_message(uid)), data)
        f = yield box.open_message(uid)
        try:
            self.assertEqual(f.read(), data)
            f.seek(0)
            self.assertEqual(f.read(4), data[:4])
        finally:
            f.close()

    @defer.inlineCallbacks
    def test_bare_lf_served_as_crlf(self) -> Gen:
        """
        A message appended with bare LFs (an IMAP client sending LF alone)
        is served with CRLF line ends, its size and metadata counted on
        them (RFC 3501 sections 2.3.4 and 7.4.2); CRLFs already there and
        bare CRs stay as they are.  Also after a restart and in a copy.
        """
        data = b"From: a@b.test\nSubject: lf\r\n\nline\r\nbare\rcr\nend\n"
        crlf = b"From: a@b.test\r\nSubject: lf\r\n\r\nline\r\nbare\rcr\r\nend\r\n"
        box = yield self.inbox()
        other = yield self.mailbox("Other")
        uid = yield box.append(data)
        (copied,) = yield box.copy([uid], other)
        for _ in range(2):
            for mailbox, u in ((box, uid), (other, copied[1])):
                (info,) = yield mailbox.list_messages([u])
                self.assertEqual(info.size, len(crlf))
                self.assertEqual((yield mailbox.read_message(u)), crlf)
                f = yield mailbox.open_message(u)
                try:
                    self.assertEqual(f.read(), crlf)
                    f.seek(0)
                    self.assertEqual(f.read(6), crlf[:6])
                finally:
                    f.close()
                md = yield mailbox.get_metadata([u])
                self.assertEqual(md[u], mime.parse_metadata(crlf))
                self.assertEqual((yield mailbox.status()).size, len(crlf))
            self._provider = self.reopen_provider(self.provider)
            box = yield self.inbox()
            other = yield (yield self.store()).get_mailbox("Other")

    @defer.inlineCallbacks
    def test_append_default_date(self) -> Gen:
        """Without an internal date, append uses the current time."""
        import time

        box = yield self.inbox()
        before = time.time()
        yield box.append(message())
        (info,) = yield box.list_messages()
        self.assertTrue(before - 1 <= info.internal_date <= time.time() + 1)

    @defer.inlineCallbacks
    def test_metadata(self) -> Gen:
        """get_metadata gives the parsed metadata of each message and leaves out unknown UIDs."""
        box = yield self.inbox()
        uids = yield self.fill(box, 3)
        found = yield box.get_metadata([uids[0], uids[2], 999])
        self.assertEqual(sorted(found), [uids[0], uids[2]])
        self.assertEqual(found[uids[0]], mime.parse_metadata(message(1)))
        self.assertEqual(found[uids[2]], mime.parse_metadata(message(3)))
        again = yield box.get_metadata([uids[0]])
        self.assertEqual(again[uids[0]], found[uids[0]])

    @defer.inlineCallbacks
    def test_list_restricted(self) -> Gen:
        """list_messages restricted to UIDs leaves out missing ones and stays ascending."""
        box = yield self.inbox()
        uids = yield self.fill(box, 5)
        infos = yield box.list_messages([uids[3], 999, uids[1]])
        self.assertEqual([i.uid for i in infos], [uids[1], uids[3]])
        infos = yield box.list_messages(range(1, 2**32))
        self.assertEqual([i.uid for i in infos], uids)
        infos = yield box.list_messages(iter([uids[4]]))
        self.assertEqual([i.uid for i in infos], [uids[4]])

    @defer.inlineCallbacks
    def test_missing_message(self) -> Gen:
        """Reading or opening a UID that does not exist fails with NoSuchMessage."""
        box = yield self.inbox()
        yield self.assertFailure(box.read_message(42), NoSuchMessage)
        yield self.assertFailure(box.open_message(42), NoSuchMessage)

    @defer.inlineCallbacks
    def test_large_message_streams(self) -> Gen:
        """A 1 MB message opened with open_message streams back byte for byte."""
        box = yield self.inbox()
        body = b"".join(b"%07d abcdefghijklmnopqrstuvwxyz0123456789\r\n" % i for i in range(22000))
        data = message(1, body)
        self.assertGreater(len(data), 1_000_000)
        uid = yield box.append(data)
        f = yield box.open_message(uid)
        chunks = []
        try:
            while chunk := f.read(65536):
                chunks.append(chunk)
        finally:
            f.close()
        self.assertEqual(b"".join(chunks), data)
        (info,) = yield box.list_messages([uid])
        self.assertEqual(info.size, len(data))

    @defer.inlineCallbacks
    def test_message_file(self) -> Gen:
        """A source of a local file is stored exactly, fsynced or not, and the caller's file is left alone."""
        box = yield self.inbox()
        for i, fsynced in enumerate((True, False)):
            data = message(10 + i)
            mf = self.message_file(data, fsynced=fsynced)
            uid = yield box.append(mf, [FLAGGED])
            self.assertEqual((yield box.read_message(uid)), data)
            found = yield box.get_metadata([uid])
            self.assertEqual(found[uid], mime.parse_metadata(data))
            assert mf.local_path is not None
            with open(mf.local_path, "rb") as f:
                self.assertEqual(f.read(), data)
        infos = yield box.list_messages()
        self.assertEqual([i.flags for i in infos], [frozenset({FLAGGED})] * 2)

    @defer.inlineCallbacks
    def test_append_every_kind_of_source(self) -> Gen:
        """
        Bytes, a source in memory, a local file and a source that only
        streams (no path, no data, short reads, not seekable) are each
        stored exactly, with their size, metadata and flags.
        """
        box = yield self.inbox()
        body = b"8-bit \xe9\xff and NUL \x00 octets\r\n.\r\n..dot\r\n" * 300
        datas = [message(20 + n, body) for n in range(4)]
        sources = [
            datas[0],
            MessageSource.from_bytes(datas[1]),
            self.message_file(datas[2], fsynced=False),
            streamed_source(datas[3], piece=1000),
        ]
        uids = []
        for source in sources:
            uids.append((yield box.append(source, [SEEN])))
        infos = yield box.list_messages(uids)
        found = yield box.get_metadata(uids)
        for uid, data, info in zip(uids, datas, infos, strict=True):
            self.assertEqual((yield box.read_message(uid)), data)
            self.assertEqual(info.size, len(data))
            self.assertEqual(info.flags, frozenset({SEEN}))
            self.assertEqual(found[uid], mime.parse_metadata(data))

    @defer.inlineCallbacks
    def test_append_streamed_bare_lf(self) -> Gen:
        """A streamed source with bare LFs (one right after a piece ending in CR) is served as its bytes would be."""
        box = yield self.inbox()
        data = b"Subject: lf\n\nline one\nCR at the end of a piece\r\nthen LF\n" + b"x" * 50 + b"\r\n"
        split = data.index(b"\r\nthen") + 1
        as_bytes = yield box.append(data)
        streamed = yield box.append(streamed_source(data, piece=split))
        self.assertEqual((yield box.read_message(streamed)), (yield box.read_message(as_bytes)))
        infos = yield box.list_messages([as_bytes, streamed])
        self.assertEqual(infos[0].size, infos[1].size)
        found = yield box.get_metadata([as_bytes, streamed])
        self.assertEqual(found[as_bytes], found[streamed])

    @defer.inlineCallbacks
    def test_append_large_stream(self) -> Gen:
        """A 5 MB source that only streams (made as it is read) is stored whole and reads back exactly."""
        size = 5 * 1024 * 1024 + 17
        box = yield self.inbox()
        uid = yield box.append(pattern_source(size))
        (info,) = yield box.list_messages([uid])
        self.assertEqual(info.size, size)
        f = yield box.open_message(uid)
        digest = hashlib.sha256()
        read = 0
        try:
            while chunk := f.read(65536):
                digest.update(chunk)
                read += len(chunk)
        finally:
            f.close()
        self.assertEqual(read, size)
        self.assertEqual(digest.hexdigest(), pattern_digest(size))
        found = yield box.get_metadata([uid])
        self.assertEqual(dict(found[uid].headers).get("Subject"), " large\r\n")

    @defer.inlineCallbacks
    def test_message_file_metadata_used(self) -> Gen:
        """A source's own metadata is stored as given, not parsed again."""
        box = yield self.inbox()
        given = MessageMetadata(
            header_size=3,
            headers=(("X-Given", " yes\r\n"),),
            envelope=(None,) * 10,
            body_structure=("TEXT", "PLAIN", None, None, None, "7BIT", 1, 1, None, None, None, None),
            lines=1,
        )
        uid = yield box.append(self.message_file(message(), metadata=given, fsynced=True))
        found = yield box.get_metadata([uid])
        self.assertEqual(found[uid], given)

    @defer.inlineCallbacks
    def test_invalid_keyword(self) -> Gen:
        """A keyword an IMAP atom cannot hold is refused with ValueError."""
        box = yield self.inbox()
        yield self.assertFailure(box.append(message(), ["bad(kw"]), ValueError)
        uid = yield box.append(message())
        yield self.assertFailure(box.set_flags([uid], ["bad kw"], FlagMode.ADD), ValueError)

    # -- UIDs -------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_uids_ascending_never_reused(self) -> Gen:
        """UIDs ascend and an expunged UID, even the last one, is never given again."""
        box = yield self.inbox()
        uids = yield self.fill(box, 3)
        self.assertEqual(uids, sorted(uids))
        self.assertEqual(len(set(uids)), 3)
        yield box.set_flags([uids[2]], [DELETED], FlagMode.ADD)
        yield box.expunge()
        status = yield box.status()
        self.assertEqual(status.uidnext, uids[2] + 1)
        new = yield box.append(message(9))
        self.assertGreater(new, uids[2])

    @defer.inlineCallbacks
    def test_uids_survive_reopen(self) -> Gen:
        """After a restart UIDVALIDITY is the same and expunged UIDs are still not reused."""
        box = yield self.inbox()
        uids = yield self.fill(box, 2)
        yield box.set_flags(uids, [DELETED], FlagMode.ADD)
        yield box.expunge()
        validity = box.uidvalidity
        provider = self.reopen_provider(self.provider)
        box2 = yield (yield provider.store_for(USER)).get_mailbox(INBOX)
        self.assertEqual(box2.uidvalidity, validity)
        status = yield box2.status()
        self.assertEqual(status.uidnext, uids[1] + 1)
        uid = yield box2.append(message(3))
        self.assertEqual(uid, uids[1] + 1)

    @defer.inlineCallbacks
    def test_status(self) -> Gen:
        """status counts messages, unseen, recent and size, and tracks UIDNEXT and HIGHESTMODSEQ."""
        box = yield self.inbox()
        empty = yield box.status()
        self.assertIsInstance(empty, MailboxStatus)
        self.assertEqual((empty.messages, empty.recent, empty.unseen, empty.size), (0, 0, 0, 0))
        self.assertEqual(empty.uidvalidity, box.uidvalidity)
        uids = yield self.fill(box, 3)
        yield box.set_flags([uids[0]], [SEEN], FlagMode.ADD)
        status = yield box.status()
        self.assertEqual(status.messages, 3)
        self.assertEqual(status.unseen, 2)
        self.assertEqual(status.recent, 3)
        self.assertEqual(status.uidnext, uids[-1] + 1)
        self.assertEqual(status.size, sum(len(message(i + 1)) for i in range(3)))
        infos = yield box.list_messages()
        self.assertEqual(status.highest_modseq, max(i.modseq for i in infos))
        self.assertGreater(status.highest_modseq, empty.highest_modseq)

    # -- flags ------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_flags_modes(self) -> Gen:
        """Flags can be replaced, added and removed, keywords included."""
        box = yield self.inbox()
        uids = yield self.fill(box, 2)
        changed = yield box.set_flags(uids, [SEEN, "Work"], FlagMode.REPLACE)
        self.assertEqual([i.uid for i in changed], uids)
        changed = yield box.set_flags([uids[0]], [FLAGGED, "$Important"], FlagMode.ADD)
        self.assertEqual(changed[0].flags, frozenset({SEEN, "Work", FLAGGED, "$Important"}))
        changed = yield box.set_flags(uids, ["Work", SEEN], FlagMode.REMOVE)
        self.assertEqual([i.flags for i in changed], [frozenset({FLAGGED, "$Important"}), frozenset()])
        infos = yield box.list_messages()
        self.assertEqual([i.flags for i in infos], [frozenset({FLAGGED, "$Important"}), frozenset()])

    @defer.inlineCallbacks
    def test_flags_case_insensitive(self) -> Gen:
        """System flags are matched case-insensitively and kept in canonical spelling; keywords keep their case."""
        box = yield self.inbox()
        uid = yield box.append(message(), ["\\SEEN", "\\answered"])
        (info,) = yield box.list_messages()
        self.assertEqual(info.flags, frozenset({SEEN, ANSWERED}))
        yield box.set_flags([uid], ["\\seen", "MixedCase", "\\Recent"], FlagMode.REMOVE)
        yield box.set_flags([uid], ["MixedCase", "\\Recent"], FlagMode.ADD)
        (info,) = yield box.list_messages()
        self.assertEqual(info.flags, frozenset({ANSWERED, "MixedCase"}))

    @defer.inlineCallbacks
    def test_unchanged_flags_not_reported(self) -> Gen:
        """A STORE that changes nothing reports nothing and does not raise the modseq."""
        box = yield self.inbox()
        uid = yield box.append(message(), [SEEN])
        before = yield box.status()
        events = self.record(box)
        changed = yield box.set_flags([uid, 999], [SEEN], FlagMode.ADD)
        self.assertEqual(changed, [])
        self.assertEqual(events, [])
        after = yield box.status()
        self.assertEqual(after.highest_modseq, before.highest_modseq)

    @defer.inlineCallbacks
    def test_unchanged_since(self) -> Gen:
        """With unchanged_since only messages whose modseq is at most that value change."""
        box = yield self.inbox()
        uids = yield self.fill(box, 2)
        infos = yield box.list_messages()
        limit = infos[0].modseq
        yield box.set_flags([uids[1]], [FLAGGED], FlagMode.ADD)
        changed = yield box.set_flags(uids, [SEEN], FlagMode.ADD, unchanged_since=limit)
        self.assertEqual([i.uid for i in changed], [uids[0]])
        infos = yield box.list_messages()
        self.assertNotIn(SEEN, infos[1].flags)

    @defer.inlineCallbacks
    def test_modseq_increases(self) -> Gen:
        """Every change raises HIGHESTMODSEQ and the changed message records a new modseq of its own."""
        box = yield self.inbox()
        seen = []
        uids = yield self.fill(box, 2)
        seen.append((yield box.status()).highest_modseq)
        infos = yield box.list_messages()
        self.assertTrue(infos[0].modseq < infos[1].modseq)
        changed = yield box.set_flags(uids, [SEEN], FlagMode.ADD)
        self.assertEqual(len({i.modseq for i in changed}), 2)
        self.assertTrue(all(i.modseq > infos[1].modseq for i in changed))
        seen.append((yield box.status()).highest_modseq)
        self.assertEqual(seen[-1], max(i.modseq for i in changed))
        yield box.set_flags([uids[0]], [DELETED], FlagMode.ADD)
        seen.append((yield box.status()).highest_modseq)
        yield box.expunge()
        seen.append((yield box.status()).highest_modseq)
        yield box.append(message(3))
        seen.append((yield box.status()).highest_modseq)
        self.assertEqual(seen, sorted(set(seen)))
        (untouched,) = yield box.list_messages([uids[1]])
        self.assertEqual(untouched.modseq, changed[1].modseq)

    # -- copy, move, expunge ------------------------------------------------------

    @defer.inlineCallbacks
    def test_copy(self) -> Gen:
        """copy keeps flags, dates and content and returns (source, target) pairs in source order."""
        box = yield self.inbox()
        target = yield self.mailbox("Archive")
        yield box.append(message(1), [SEEN, "Tagged"], 1_600_000_000.0)
        yield box.append(message(2), [], 1_600_000_100.0)
        uids = [i.uid for i in (yield box.list_messages())]
        events = self.record(target)
        pairs = yield box.copy([uids[1], uids[0], 999], target)
        self.assertEqual([p[0] for p in pairs], uids)
        copied = yield target.list_messages()
        self.assertEqual([i.uid for i in copied], [p[1] for p in pairs])
        self.assertEqual([i.flags for i in copied], [frozenset({SEEN, "Tagged"}), frozenset()])
        self.assertEqual([i.internal_date for i in copied], [1_600_000_000.0, 1_600_000_100.0])
        self.assertEqual((yield target.read_message(pairs[0][1])), message(1))
        md = yield target.get_metadata([pairs[1][1]])
        self.assertEqual(md[pairs[1][1]], mime.parse_metadata(message(2)))
        self.assertEqual(len((yield box.list_messages())), 2)
        self.assertEqual([type(e) for e in events], [MessagesAdded])
        self.assertEqual([i.uid for i in events[0].messages], [p[1] for p in pairs])

    @defer.inlineCallbacks
    def test_copy_same_mailbox_and_other_user(self) -> Gen:
        """Messages can be copied into their own mailbox and into another user's store."""
        box = yield self.inbox()
        (uid,) = yield self.fill(box, 1, (FLAGGED,))
        pairs = yield box.copy([uid], box)
        self.assertEqual(len(pairs), 1)
        self.assertGreater(pairs[0][1], uid)
        self.assertEqual((yield box.read_message(pairs[0][1])), message(1))
        other = yield self.inbox(OTHER)
        pairs = yield box.copy([uid], other)
        (info,) = yield other.list_messages()
        self.assertEqual((info.uid, info.flags), (pairs[0][1], frozenset({FLAGGED})))

    @defer.inlineCallbacks
    def test_move(self) -> Gen:
        """move copies with flags and dates, then expunges the source and tells its listeners."""
        box = yield self.inbox()
        target = yield self.mailbox("Trash")
        uids = yield self.fill(box, 3, (ANSWERED,))
        events = self.record(box)
        pairs = yield box.move([uids[0], uids[2]], target)
        self.assertEqual([p[0] for p in pairs], [uids[0], uids[2]])
        self.assertEqual([i.uid for i in (yield box.list_messages())], [uids[1]])
        moved = yield target.list_messages()
        self.assertEqual([i.flags for i in moved], [frozenset({ANSWERED})] * 2)
        self.assertEqual((yield target.read_message(pairs[1][1])), message(3))
        expunged = [e for e in events if isinstance(e, MessagesExpunged)]
        self.assertEqual([e.uids for e in expunged], [(uids[0], uids[2])])

    @defer.inlineCallbacks
    def test_expunge_only_deleted(self) -> Gen:
        """expunge removes exactly the messages flagged \\Deleted and returns their UIDs."""
        box = yield self.inbox()
        uids = yield self.fill(box, 4)
        yield box.set_flags([uids[0], uids[2]], [DELETED], FlagMode.ADD)
        removed = yield box.expunge()
        self.assertEqual(removed, [uids[0], uids[2]])
        self.assertEqual([i.uid for i in (yield box.list_messages())], [uids[1], uids[3]])
        yield self.assertFailure(box.read_message(uids[0]), NoSuchMessage)
        self.assertEqual((yield box.expunge()), [])

    @defer.inlineCallbacks
    def test_uid_expunge(self) -> Gen:
        """expunge with UIDs only removes those of them that are \\Deleted (UIDPLUS)."""
        box = yield self.inbox()
        uids = yield self.fill(box, 3)
        yield box.set_flags(uids[:2], [DELETED], FlagMode.ADD)
        removed = yield box.expunge([uids[1], uids[2]])
        self.assertEqual(removed, [uids[1]])
        self.assertEqual([i.uid for i in (yield box.list_messages())], [uids[0], uids[2]])

    @defer.inlineCallbacks
    def test_expunged_since(self) -> Gen:
        """expunged_since: the UIDs expunged after a modseq, ascending, restricted to given UIDs (RFC 7162 section 3.2)."""
        box = yield self.inbox()
        self.assertTrue(verifyObject(IExpungeHistory, box))
        uids = yield self.fill(box, 6)
        start = (yield box.status()).highest_modseq
        self.assertEqual((yield box.expunged_since(start)), [])
        yield box.set_flags([uids[3], uids[1]], [DELETED], FlagMode.ADD)
        yield box.expunge()
        middle = (yield box.status()).highest_modseq
        yield box.set_flags([uids[4]], [DELETED], FlagMode.ADD)
        yield box.expunge()
        self.assertEqual((yield box.expunged_since(start)), [uids[1], uids[3], uids[4]])
        self.assertEqual((yield box.expunged_since(middle)), [uids[4]])
        self.assertEqual((yield box.expunged_since((yield box.status()).highest_modseq)), [])
        self.assertEqual(
            (yield box.expunged_since(start, [uids[0], uids[3], uids[4], 999])), [uids[3], uids[4]]
        )
        self.assertEqual((yield box.expunged_since(start, [])), [])

    @defer.inlineCallbacks
    def test_expunged_since_survives_reopen(self) -> Gen:
        """The expunge history survives a restart (QRESYNC after a reconnect, RFC 7162 section 3.2.5)."""
        box = yield self.inbox()
        uids = yield self.fill(box, 4)
        start = (yield box.status()).highest_modseq
        yield box.set_flags(uids[:2], [DELETED], FlagMode.ADD)
        yield box.expunge()
        later = (yield box.status()).highest_modseq
        provider = self.reopen_provider(self.provider)
        box2 = yield (yield provider.store_for(USER)).get_mailbox(INBOX)
        self.assertEqual((yield box2.expunged_since(start)), uids[:2])
        self.assertEqual((yield box2.expunged_since(later)), [])
        self.assertEqual((yield box2.expunged_since(start, uids[1:])), [uids[1]])

    @defer.inlineCallbacks
    def test_open_message_survives_expunge(self) -> Gen:
        """An open message keeps its content when the message is expunged meanwhile."""
        box = yield self.inbox()
        (uid,) = yield self.fill(box, 1)
        f = yield box.open_message(uid)
        try:
            yield box.set_flags([uid], [DELETED, SEEN], FlagMode.ADD)
            yield box.expunge()
            self.assertEqual(f.read(), message(1))
        finally:
            f.close()

    # -- listeners ----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_listeners(self) -> Gen:
        """Listeners see additions, flag changes and expunges in order, also from another open."""
        box = yield self.inbox()
        other = yield (yield self.store()).get_mailbox("inbox")
        events = self.record(box)
        uid = yield other.append(message())
        yield other.set_flags([uid], [DELETED], FlagMode.ADD)
        yield other.expunge()
        self.assertEqual([type(e) for e in events], [MessagesAdded, FlagsChanged, MessagesExpunged])
        self.assertEqual(events[0].messages[0].uid, uid)
        self.assertEqual(events[1].messages[0].flags, frozenset({DELETED}))
        self.assertEqual(events[2].uids, (uid,))
        self.assertEqual(events[2].highest_modseq, (yield box.status()).highest_modseq)

    @defer.inlineCallbacks
    def test_remove_listener(self) -> Gen:
        """A removed listener hears nothing more; a failing listener does not break the change."""
        box = yield self.inbox()
        events: list[Any] = []
        remove = box.add_listener(events.append)

        def broken(change: Any) -> None:
            raise RuntimeError("listener bug")

        box.add_listener(broken)
        yield box.append(message(1))
        remove()
        yield box.append(message(2))
        self.assertEqual(len(events), 1)
        self.assertEqual(len((yield box.list_messages())), 2)
        self.flushLoggedErrors(RuntimeError)  # type: ignore[attr-defined]  # provided by the TestCase this mixin goes into

    @defer.inlineCallbacks
    def test_listener_mailbox_deleted(self) -> Gen:
        """Deleting a mailbox tells its listeners, and the old object refuses further use."""
        box = yield self.mailbox("Old")
        events = self.record(box)
        yield (yield self.store()).delete_mailbox("Old")
        self.assertEqual(events, [MailboxDeleted()])
        yield self.assertFailure(box.append(message()), NoSuchMailbox)
        yield self.assertFailure(box.list_messages(), NoSuchMailbox)

    # -- recent -------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_claim_recent_once(self) -> Gen:
        """Each UID is claimed as recent by exactly one call, across opens of the mailbox."""
        box = yield self.inbox()
        uids = yield self.fill(box, 2)
        again = yield (yield self.store()).get_mailbox(INBOX)
        self.assertEqual((yield box.claim_recent()), uids)
        self.assertEqual((yield again.claim_recent()), [])
        self.assertEqual((yield box.status()).recent, 0)
        new = yield box.append(message(3))
        self.assertEqual((yield again.status()).recent, 1)
        self.assertEqual((yield again.claim_recent()), [new])
        self.assertEqual((yield box.claim_recent()), [])

    @defer.inlineCallbacks
    def test_claim_recent_persists(self) -> Gen:
        """Claimed UIDs stay claimed after a restart."""
        box = yield self.inbox()
        yield self.fill(box, 2)
        yield box.claim_recent()
        provider = self.reopen_provider(self.provider)
        box2 = yield (yield provider.store_for(USER)).get_mailbox(INBOX)
        self.assertEqual((yield box2.claim_recent()), [])
        self.assertEqual((yield box2.status()).recent, 0)

    # -- folders --------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_create_with_parents_and_list(self) -> Gen:
        """Creating a/b/c creates its parents; LIST with * and % walks the hierarchy."""
        store = yield self.store()
        yield store.create_mailbox("Work/Projects/Txmail")
        yield store.create_mailbox("Sent")
        everything = yield store.list_mailboxes("*")
        self.assertEqual(
            [f.name for f in everything], [INBOX, "Sent", "Work", "Work/Projects", "Work/Projects/Txmail"]
        )
        self.assertTrue(all(f.selectable for f in everything))
        top = yield store.list_mailboxes("%")
        self.assertEqual([f.name for f in top], [INBOX, "Sent", "Work"])
        work = {f.name: f for f in top}["Work"]
        self.assertTrue(work.has_children)
        self.assertFalse({f.name: f for f in top}["Sent"].has_children)
        second = yield store.list_mailboxes("Work/%")
        self.assertEqual([f.name for f in second], ["Work/Projects"])
        box = yield store.get_mailbox("Work/Projects")
        self.assertEqual(box.name, "Work/Projects")

    @defer.inlineCallbacks
    def test_create_existing(self) -> Gen:
        """Creating an existing mailbox, or INBOX in any case, fails with MailboxExists."""
        store = yield self.store()
        yield store.create_mailbox("Drafts")
        yield self.assertFailure(store.create_mailbox("Drafts"), MailboxExists)
        yield self.assertFailure(store.create_mailbox("inbox"), MailboxExists)

    @defer.inlineCallbacks
    def test_inbox_case_insensitive(self) -> Gen:
        """INBOX is found whatever its case, and reported as INBOX."""
        store = yield self.store()
        box = yield store.get_mailbox("iNbOx")
        self.assertEqual(box.name, INBOX)
        yield store.create_mailbox("inbox/Sub")
        folders = yield store.list_mailboxes("inbox*")
        self.assertEqual([f.name for f in folders], [INBOX, "INBOX/Sub"])
        sub = yield store.get_mailbox("Inbox/Sub")
        self.assertEqual(sub.name, "INBOX/Sub")

    @defer.inlineCallbacks
    def test_missing_mailbox(self) -> Gen:
        """Opening a mailbox that does not exist fails with NoSuchMailbox."""
        yield self.assertFailure((yield self.store()).get_mailbox("Nope"), NoSuchMailbox)

    @defer.inlineCallbacks
    def test_invalid_names(self) -> Gen:
        """Names that are empty, hold .., ~, NUL or CR/LF are refused everywhere."""
        store = yield self.store()
        for name in ("", "..", "a/../b", "~x", "a/~b", "a\x00b", "a\r\nb", "/", "a//b", "."):
            yield self.assertFailure(store.create_mailbox(name), InvalidMailboxName)
            yield self.assertFailure(store.get_mailbox(name), InvalidMailboxName)
            yield self.assertFailure(store.delete_mailbox(name), InvalidMailboxName)
            yield self.assertFailure(store.rename_mailbox(INBOX, name), InvalidMailboxName)
            yield self.assertFailure(store.subscribe(name), InvalidMailboxName)
        folders = yield store.list_mailboxes("*")
        self.assertEqual([f.name for f in folders], [INBOX])

    @defer.inlineCallbacks
    def test_delete(self) -> Gen:
        """A deleted mailbox is gone with its messages; INBOX and missing names cannot be deleted."""
        store = yield self.store()
        box = yield self.mailbox("Junk")
        yield self.fill(box, 2)
        yield store.delete_mailbox("Junk")
        self.assertEqual([f.name for f in (yield store.list_mailboxes("*"))], [INBOX])
        yield self.assertFailure(store.get_mailbox("Junk"), NoSuchMailbox)
        yield self.assertFailure(store.delete_mailbox("Junk"), NoSuchMailbox)
        yield self.assertFailure(store.delete_mailbox("inbox"), InvalidMailboxName)
        again = yield self.mailbox("Junk")
        self.assertEqual((yield again.status()).messages, 0)
        self.assertTrue(again.uidvalidity != box.uidvalidity)

    @defer.inlineCallbacks
    def test_delete_with_children(self) -> Gen:
        """Deleting a mailbox with children leaves a non-selectable parent; deleting that fails."""
        store = yield self.store()
        parent = yield self.mailbox("Lists")
        yield self.fill(parent, 1)
        child = yield self.mailbox("Lists/Twisted")
        yield self.fill(child, 1)
        yield store.delete_mailbox("Lists")
        folders = {f.name: f for f in (yield store.list_mailboxes("*"))}
        self.assertFalse(folders["Lists"].selectable)
        self.assertTrue(folders["Lists"].has_children)
        self.assertTrue(folders["Lists/Twisted"].selectable)
        yield self.assertFailure(store.get_mailbox("Lists"), NoSuchMailbox)
        yield self.assertFailure(store.delete_mailbox("Lists"), MailboxNotEmpty)
        child2 = yield store.get_mailbox("Lists/Twisted")
        self.assertEqual((yield child2.status()).messages, 1)
        recreated = yield self.mailbox("Lists")
        self.assertEqual((yield recreated.status()).messages, 0)

    @defer.inlineCallbacks
    def test_rename_with_children(self) -> Gen:
        """Renaming moves a mailbox and its children with their messages; the old names are gone."""
        store = yield self.store()
        a = yield self.mailbox("A")
        yield self.fill(a, 2, (SEEN,))
        b = yield self.mailbox("A/B")
        yield self.fill(b, 1)
        events = self.record(a)
        yield store.rename_mailbox("A", "Z/Y")
        self.assertEqual(events, [MailboxDeleted()])
        names = [f.name for f in (yield store.list_mailboxes("*"))]
        self.assertEqual(names, [INBOX, "Z", "Z/Y", "Z/Y/B"])
        y = yield store.get_mailbox("Z/Y")
        infos = yield y.list_messages()
        self.assertEqual([i.flags for i in infos], [frozenset({SEEN})] * 2)
        self.assertEqual((yield y.read_message(infos[1].uid)), message(2))
        yb = yield store.get_mailbox("Z/Y/B")
        self.assertEqual((yield yb.status()).messages, 1)
        yield self.assertFailure(store.get_mailbox("A"), NoSuchMailbox)
        yield self.assertFailure(store.get_mailbox("A/B"), NoSuchMailbox)

    @defer.inlineCallbacks
    def test_rename_errors(self) -> Gen:
        """Renaming a missing mailbox, onto an existing one, or below itself fails."""
        store = yield self.store()
        yield store.create_mailbox("One")
        yield store.create_mailbox("Two")
        yield self.assertFailure(store.rename_mailbox("Missing", "Three"), NoSuchMailbox)
        yield self.assertFailure(store.rename_mailbox("One", "Two"), MailboxExists)
        yield self.assertFailure(store.rename_mailbox("One", "INBOX"), MailboxExists)
        yield self.assertFailure(store.rename_mailbox("One", "One/Sub"), InvalidMailboxName)
        names = [f.name for f in (yield store.list_mailboxes("*"))]
        self.assertEqual(names, [INBOX, "One", "Two"])

    @defer.inlineCallbacks
    def test_rename_inbox(self) -> Gen:
        """Renaming INBOX moves its messages to the new mailbox and leaves INBOX empty."""
        store = yield self.store()
        inbox = yield self.inbox()
        uids = yield self.fill(inbox, 2, (FLAGGED,))
        yield store.create_mailbox("INBOX/Child")
        events = self.record(inbox)
        yield store.rename_mailbox("INBOX", "Old Mail")
        self.assertEqual((yield inbox.status()).messages, 0)
        self.assertEqual([type(e) for e in events], [MessagesExpunged])
        self.assertEqual(events[0].uids, tuple(uids))
        old = yield store.get_mailbox("Old Mail")
        infos = yield old.list_messages()
        self.assertEqual([i.flags for i in infos], [frozenset({FLAGGED})] * 2)
        self.assertEqual((yield old.read_message(infos[0].uid)), message(1))
        names = [f.name for f in (yield store.list_mailboxes("*"))]
        self.assertEqual(names, [INBOX, "INBOX/Child", "Old Mail"])
        new = yield inbox.append(message(5))
        self.assertGreater(new, uids[-1])

    @defer.inlineCallbacks
    def test_names_stay_inside_store(self) -> Gen:
        """Mailbox names cannot reach another user's store."""
        other = yield self.store(OTHER)
        yield self.fill((yield self.inbox(OTHER)), 1)
        store = yield self.store()
        for name in ("../bob", "../../example.test/bob", "..%2Fbob"):
            try:
                yield store.create_mailbox(name)
            except InvalidMailboxName:
                continue
            box = yield store.get_mailbox(name)
            self.assertEqual((yield box.status()).messages, 0)
        self.assertEqual(len((yield (yield other.get_mailbox(INBOX)).list_messages())), 1)

    # -- subscriptions and special use ---------------------------------------------------

    @defer.inlineCallbacks
    def test_subscriptions(self) -> Gen:
        """Subscriptions are kept sorted, shown in LIST, and unsubscribing an unknown name fails."""
        store = yield self.store()
        yield store.create_mailbox("Sent")
        yield store.subscribe("Sent")
        yield store.subscribe("inbox")
        yield store.subscribe("Not/Yet")
        self.assertEqual((yield store.subscriptions()), [INBOX, "Not/Yet", "Sent"])
        folders = {f.name: f for f in (yield store.list_mailboxes("*"))}
        self.assertTrue(folders["Sent"].subscribed)
        yield store.unsubscribe("Not/Yet")
        self.assertEqual((yield store.subscriptions()), [INBOX, "Sent"])
        yield self.assertFailure(store.unsubscribe("Not/Yet"), NoSuchMailbox)
        provider = self.reopen_provider(self.provider)
        self.assertEqual((yield (yield provider.store_for(USER)).subscriptions()), [INBOX, "Sent"])

    @defer.inlineCallbacks
    def test_special_use(self) -> Gen:
        """A mailbox created with a special-use role is found by it, also after a restart and a rename."""
        store = yield self.store()
        self.assertIsNone((yield store.special_use_mailbox(SpecialUse.SENT)))
        yield store.create_mailbox("Sent Items", SpecialUse.SENT)
        yield store.create_mailbox("Bin", special_use=SpecialUse.TRASH)
        self.assertEqual((yield store.special_use_mailbox(SpecialUse.SENT)), "Sent Items")
        self.assertEqual((yield store.special_use_mailbox(SpecialUse.TRASH)), "Bin")
        folders = {f.name: f for f in (yield store.list_mailboxes("*"))}
        self.assertIs(folders["Sent Items"].special_use, SpecialUse.SENT)
        yield store.rename_mailbox("Bin", "Trash")
        provider = self.reopen_provider(self.provider)
        store2 = yield provider.store_for(USER)
        self.assertEqual((yield store2.special_use_mailbox(SpecialUse.TRASH)), "Trash")
        yield store2.delete_mailbox("Trash")
        self.assertIsNone((yield store2.special_use_mailbox(SpecialUse.TRASH)))

    # -- persistence -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_persistence(self) -> Gen:
        """Messages, flags, keywords, dates, modseqs and folders survive a restart."""
        store = yield self.store()
        yield store.create_mailbox("Keep")
        box = yield store.get_mailbox("Keep")
        yield box.append(message(1), [SEEN, "Alpha"], 1_500_000_000.0)
        yield box.append(message(2), [], 1_500_000_001.0)
        before = yield box.list_messages()
        status = yield box.status()
        provider = self.reopen_provider(self.provider)
        box2 = yield (yield provider.store_for(USER)).get_mailbox("Keep")
        self.assertEqual(box2.uidvalidity, box.uidvalidity)
        self.assertEqual((yield box2.list_messages()), before)
        self.assertEqual((yield box2.status()).highest_modseq, status.highest_modseq)
        self.assertEqual((yield box2.read_message(before[1].uid)), message(2))
        md = yield box2.get_metadata([before[0].uid])
        self.assertEqual(md[before[0].uid], mime.parse_metadata(message(1)))


class InboxDeliveryConformanceMixin:
    """
    Behaviour of a provider that also provides the optional
    :class:`txmail.interfaces.IInboxDelivery`.  Mix it in before
    :class:`MailStoreConformanceMixin`, whose helpers it uses::

        class MyStoreTests(InboxDeliveryConformanceMixin, MailStoreConformanceMixin, TestCase):
            ...
    """

    # Provided by MailStoreConformanceMixin and TestCase.
    provider: Any
    inbox: Any
    record: Any
    assertEqual: Any
    assertTrue: Any

    def inbox_delivery(self) -> Any:
        """The provider, checked to provide :class:`IInboxDelivery` fully."""
        self.assertTrue(verifyObject(IInboxDelivery, self.provider))
        return self.provider

    @defer.inlineCallbacks
    def test_deliver_to_inboxes(self) -> Gen:
        """
        One message into several INBOXes at once: each copy as append makes
        it (octets, size, metadata, date, no flags, a new UID), a user's
        storage made on first use, an open INBOX's listeners told before
        the result fires.
        """
        provider = self.inbox_delivery()
        box = yield self.inbox()
        yield box.append(message(1))
        events = self.record(box)
        data = message(2, b"line one\nline two\n")  # bare LFs: stored and served as CRLF
        crlf = data.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
        source = MessageSource.from_bytes(data)
        uids = yield provider.deliver_to_inboxes([USER, OTHER], source, 1_700_000_000.0)
        self.assertEqual(uids, {USER: 2, OTHER: 1})
        self.assertEqual([type(e) for e in events], [MessagesAdded])
        self.assertEqual([i.uid for i in events[0].messages], [2])
        for user, uid in uids.items():
            inbox = yield self.inbox(user)
            (info,) = [i for i in (yield inbox.list_messages()) if i.uid == uid]
            self.assertEqual(info.flags, frozenset())
            self.assertEqual(info.internal_date, 1_700_000_000.0)
            self.assertEqual(info.size, len(crlf))
            self.assertEqual((yield inbox.read_message(uid)), crlf)
            self.assertEqual((yield inbox.get_metadata([uid]))[uid], mime.parse_metadata(crlf))
        self.assertEqual((yield provider.deliver_to_inboxes([], source)), {})

    @defer.inlineCallbacks
    def test_deliver_to_inboxes_streams(self) -> Gen:
        """A large streamed source goes into every INBOX whole; the copies stay apart when one is expunged."""
        provider = self.inbox_delivery()
        size = 3 * 1024 * 1024 + 17
        uids = yield provider.deliver_to_inboxes([USER, OTHER], pattern_source(size))
        mine = yield self.inbox(USER)
        yield mine.set_flags([uids[USER]], [DELETED], FlagMode.ADD)
        yield mine.expunge()
        theirs = yield self.inbox(OTHER)
        f = yield theirs.open_message(uids[OTHER])
        try:
            digest = hashlib.sha256()
            while chunk := f.read(65536):
                digest.update(chunk)
        finally:
            f.close()
        self.assertEqual(digest.hexdigest(), pattern_digest(size))


class SieveScriptsConformanceMixin:
    """
    Behaviour of a store that also provides the optional
    :class:`txmail.interfaces.ISieveScripts`.  Mix it in before
    :class:`MailStoreConformanceMixin`, whose helpers it uses::

        class MyStoreTests(SieveScriptsConformanceMixin, MailStoreConformanceMixin, TestCase):
            ...
    """

    # Provided by MailStoreConformanceMixin and TestCase.
    provider: IMailStoreProvider
    store: Callable[..., defer.Deferred[IMailStore]]
    reopen_provider: Any
    assertEqual: Any
    assertTrue: Any
    assertIsNone: Any
    assertFailure: Any

    @defer.inlineCallbacks
    def scripts(self, user: str = USER) -> Any:
        """The store of *user*, checked to provide :class:`ISieveScripts` fully."""
        store = yield self.store(user)
        self.assertTrue(verifyObject(ISieveScripts, store))
        return store

    @defer.inlineCallbacks
    def test_scripts_put_get_list(self) -> Gen:
        """Scripts are stored as given, listed by name, none active at first; a put replaces."""
        store = yield self.scripts()
        self.assertEqual((yield store.list_scripts()), [])
        self.assertIsNone((yield store.active_script()))
        yield store.put_script("work", b'require "fileinto";\r\nfileinto "Work";\r\n')
        yield store.put_script("a\u0301 vacation", b"keep;\r\n")  # stored in NFC
        yield store.put_script("work", b"keep;\r\n")
        listed = yield store.list_scripts()
        self.assertEqual(listed, [("work", False), ("\u00e1 vacation", False)])  # code point order
        self.assertEqual((yield store.get_script("work")), b"keep;\r\n")
        self.assertEqual((yield store.get_script("\u00e1 vacation")), b"keep;\r\n")
        yield self.assertFailure(store.get_script("missing"), NoSuchScript)

    @defer.inlineCallbacks
    def test_scripts_active(self) -> Gen:
        """One script at most is active; it cannot be deleted; a replace and a rename keep it active."""
        store = yield self.scripts()
        yield store.put_script("one", b"keep;\r\n")
        yield store.put_script("two", b"discard;\r\n")
        yield self.assertFailure(store.set_active("three"), NoSuchScript)
        yield store.set_active("one")
        yield store.set_active("two")
        self.assertEqual((yield store.list_scripts()), [("one", False), ("two", True)])
        yield self.assertFailure(store.delete_script("two"), ScriptActive)
        yield store.put_script("two", b"stop;\r\n")
        self.assertEqual((yield store.active_script()), ("two", b"stop;\r\n"))
        yield self.assertFailure(store.rename_script("two", "one"), ScriptExists)
        yield self.assertFailure(store.rename_script("zero", "four"), NoSuchScript)
        yield store.rename_script("two", "three")
        self.assertEqual((yield store.active_script()), ("three", b"stop;\r\n"))
        yield store.delete_script("one")
        yield self.assertFailure(store.delete_script("one"), NoSuchScript)
        yield store.set_active(None)
        self.assertIsNone((yield store.active_script()))
        self.assertEqual((yield store.list_scripts()), [("three", False)])
        yield store.delete_script("three")
        self.assertEqual((yield store.list_scripts()), [])

    @defer.inlineCallbacks
    def test_scripts_invalid_names(self) -> Gen:
        """Names with control characters, a slash, a leading dot, or too long are refused."""
        store = yield self.scripts()
        for name in ("", "a/b", ".hidden", "tab\there", "nul\x00", "line\u2028sep", "x" * 129):
            yield self.assertFailure(store.put_script(name, b"keep;\r\n"), InvalidScriptName)
        yield store.put_script("x" * 128, b"keep;\r\n")
        yield self.assertFailure(store.rename_script("x" * 128, "a/b"), InvalidScriptName)
        self.assertEqual((yield store.list_scripts()), [("x" * 128, False)])

    @defer.inlineCallbacks
    def test_scripts_per_user_and_durable(self) -> Gen:
        """Each user has their own scripts, and they outlive a restart of a persistent backend."""
        store = yield self.scripts()
        other = yield self.scripts(OTHER)
        yield store.put_script("mine", b"keep;\r\n")
        yield store.set_active("mine")
        self.assertEqual((yield other.list_scripts()), [])
        provider = self.reopen_provider(self.provider)
        again = yield provider.store_for(USER)
        self.assertEqual((yield again.list_scripts()), [("mine", True)])
        self.assertEqual((yield again.active_script()), ("mine", b"keep;\r\n"))


class ExpungedEmailIdsConformanceMixin:
    """
    Behaviour of a store whose mailboxes also provide the optional
    :class:`txmail.interfaces.IExpungedEmailIds`.  Mix it in before
    :class:`MailStoreConformanceMixin`, whose helpers it uses.
    """

    # Provided by MailStoreConformanceMixin and TestCase.
    provider: IMailStoreProvider
    inbox: Callable[..., defer.Deferred[IMailbox]]
    mailbox: Callable[..., defer.Deferred[IMailbox]]
    fill: Any
    reopen_provider: Any
    assertEqual: Any
    assertTrue: Any

    @defer.inlineCallbacks
    def test_expunged_email_ids(self) -> Gen:
        """
        The EMAILIDs of expunged messages (one EXPUNGE, a MOVE out, another
        EXPUNGE) are given by UID, also after a restart; UIDs present or
        never used are left out.
        """
        box = yield self.inbox()
        self.assertTrue(verifyObject(IExpungedEmailIds, box))
        uids = yield self.fill(box, 5)
        ids = {info.uid: info.email_id for info in (yield box.list_messages())}
        self.assertEqual((yield box.expunged_email_ids(uids)), {})
        yield box.set_flags([uids[0], uids[2]], [DELETED], FlagMode.ADD)
        yield box.expunge()
        archive = yield self.mailbox("Archive")
        yield box.move([uids[3]], archive)
        yield box.set_flags([uids[4]], [DELETED], FlagMode.ADD)
        yield box.expunge([uids[4]])
        gone = {uid: ids[uid] for uid in (uids[0], uids[2], uids[3], uids[4])}
        self.assertEqual((yield box.expunged_email_ids([*uids, 999])), gone)
        self.assertEqual((yield box.expunged_email_ids([uids[2]])), {uids[2]: ids[uids[2]]})
        provider = self.reopen_provider(self.provider)
        again = yield (yield provider.store_for(USER)).get_mailbox(INBOX)
        self.assertEqual((yield again.expunged_email_ids(uids)), gone)
