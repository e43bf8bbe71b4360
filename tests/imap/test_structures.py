"""
FETCH of ENVELOPE, BODYSTRUCTURE and BODY from the records a store keeps
(:class:`txmail.interfaces.IRecordCache`, :mod:`txmail.imap.structures`):
which FETCHes use them, the Maildir store's records file, and the
responses compared with the metadata path through the adapter.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_commands import command
from tests.imap.test_server import USER, ServerTestCase
from tests.store.test_columns import generated_messages
from txmail.imap import structures
from txmail.imap.commands import selected
from txmail.imap.fetch import Structures
from txmail.interfaces import IRecordCache
from txmail.store import _maildir_columns as columns_file
from txmail.store.maildir import MaildirProvider
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

#: FETCHes compared on both paths (the first four use the records).
COMPARED = (
    b"UID FETCH 1:* (ENVELOPE BODYSTRUCTURE INTERNALDATE FLAGS RFC822.SIZE)",
    b"FETCH 1:* (BODY ENVELOPE)",
    b"FETCH 1:* (BODYSTRUCTURE BODY.PEEK[TEXT]<0.20> INTERNALDATE)",
    b"UID FETCH 1:* (FLAGS BODYSTRUCTURE)",
    b"FETCH 1:* (ENVELOPE BODY.PEEK[HEADER.FIELDS (Subject)])",
    b"FETCH 1:* (ENVELOPE THREADID)",
)


def _items(line: bytes) -> Any:
    return command(b"a1 " + line + b"\r\n").args.items  # type: ignore[union-attr]


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class _Maildir:
    def make_mailbox(self, count: int) -> Any:
        root = tempfile.mkdtemp()
        self.addCleanup(_rmtree, root)  # type: ignore[attr-defined]
        self.root = root
        self.provider = MaildirProvider(root, hostname="test.host", clock=task.Clock(), watch="off")
        mailbox = self.reopen(self.provider)
        for body in generated_messages(count):
            self.successResultOf(mailbox.append(body, (), 1_600_000_000))  # type: ignore[attr-defined]
        return mailbox

    def reopen(self, provider: Any = None) -> Any:
        provider = provider or MaildirProvider(
            self.root, hostname="test.host", clock=task.Clock(), watch="off"
        )
        store = self.successResultOf(provider.store_for(USER))  # type: ignore[attr-defined]
        return self.successResultOf(store.get_mailbox("INBOX"))  # type: ignore[attr-defined]


class FetchUsesStructuresTests(_Maildir, SynchronousTestCase):
    def setUp(self) -> None:
        self.mailbox = self.make_mailbox(0)

    def test_used(self) -> None:
        """ENVELOPE, BODYSTRUCTURE or BODY of many messages, beside items that read no metadata."""
        for line in COMPARED[:4]:
            self.assertTrue(
                structures.fetch_uses_structures(self.mailbox, _items(line), structures.MANY), line
            )

    def test_not_used(self) -> None:
        """Few messages, header fields or THREADID beside them, no structure item, or a store without records."""
        for line in COMPARED[4:]:
            self.assertFalse(structures.fetch_uses_structures(self.mailbox, _items(line), 5000), line)
        self.assertFalse(
            structures.fetch_uses_structures(self.mailbox, _items(COMPARED[0]), structures.MANY - 1)
        )
        self.assertFalse(
            structures.fetch_uses_structures(self.mailbox, _items(b"FETCH 1:* (FLAGS UID)"), 5000)
        )
        memory = self.successResultOf(
            self.successResultOf(MemoryProvider().store_for(USER)).get_mailbox("INBOX")
        )
        self.assertFalse(IRecordCache.providedBy(memory))
        self.assertFalse(structures.fetch_uses_structures(memory, _items(COMPARED[0]), 5000))


class MaildirRecordsTests(_Maildir, SynchronousTestCase):
    def test_kept_across_restart(self) -> None:
        """Records kept are given back, after a restart too; another kind's and unknown UIDs are not."""
        mailbox = self.make_mailbox(4)
        uids = [i.uid for i in self.successResultOf(mailbox.list_messages())]
        self.assertEqual(self.successResultOf(mailbox.cached_records("k-1", uids)), {})
        records = {uids[0]: ("a", b"\x00\xff", "b", "text"), uids[2]: ()}
        self.successResultOf(mailbox.cache_records("k-1", records))
        self.assertEqual(self.successResultOf(mailbox.cached_records("k-1", [*uids, 99])), records)
        self.assertTrue(os.path.exists(os.path.join(mailbox.path, "txmail-records-k-1")))
        again = self.reopen()
        self.assertEqual(self.successResultOf(again.cached_records("k-1", uids)), records)
        self.assertEqual(self.successResultOf(again.cached_records("k-2", uids)), {})

    def test_own_records_not_read_back(self) -> None:
        """
        Records this mailbox appended are kept as if read: the next write
        and read parse none of them from the file (a FETCH keeps its
        records every KEEP_EVERY messages); another writer's are read.
        """
        mailbox = self.make_mailbox(6)
        uids = [i.uid for i in self.successResultOf(mailbox.list_messages())]
        first = {uid: ("n", str(uid)) for uid in uids[:2]}
        self.successResultOf(mailbox.cache_records("k", first))
        second = {uid: ("n", str(uid)) for uid in uids[2:4]}
        parsed: list[int] = []
        original = columns_file._parse
        self.patch(
            columns_file, "_parse", lambda data, names: parsed.append(len(data)) or original(data, names)
        )
        self.successResultOf(mailbox.cache_records("k", second))
        self.successResultOf(mailbox.cache_records("k", {uids[4]: ("n", "4")}))
        self.assertEqual(
            self.successResultOf(mailbox.cached_records("k", uids)), {**first, **second, uids[4]: ("n", "4")}
        )
        self.assertEqual(parsed, [])
        # Appended by someone else: read (and only that block).
        columns_file.append_columns(
            mailbox.path, ("k",), [(mailbox._locs[uids[5]].base, ("n", "5"))], "txmail-records-k"
        )
        self.assertEqual(self.successResultOf(mailbox.cached_records("k", uids[5:])), {uids[5]: ("n", "5")})
        self.assertEqual(len(parsed), 1)

    def test_bad_kind(self) -> None:
        """A kind that could not name a file is refused."""
        mailbox = self.make_mailbox(1)
        for kind in ("", "../x", "A", "a/b", "x" * 65, 3):
            with self.assertRaises(ValueError):
                mailbox.cached_records(kind, [1])
            with self.assertRaises(ValueError):
                mailbox.cache_records(kind, {1: ()})

    def test_expunged_and_compacted(self) -> None:
        """An expunged message's record is gone; mostly stale records are written again, live ones alone."""
        self.patch(columns_file, "SLACK", 0)
        mailbox = self.make_mailbox(4)
        uids = [i.uid for i in self.successResultOf(mailbox.list_messages())]
        self.successResultOf(mailbox.cache_records("k", {uid: ("n", str(uid)) for uid in uids}))
        self.successResultOf(mailbox.set_flags(uids[:3], ["\\Deleted"], _add()))
        self.successResultOf(mailbox.expunge())
        self.assertEqual(
            self.successResultOf(mailbox.cached_records("k", uids)), {uids[3]: ("n", str(uids[3]))}
        )
        # 4 + 1 records for 1 message: written again, its new record alone.
        self.successResultOf(mailbox.cache_records("k", {uids[3]: ("n", "again")}))
        self.assertEqual(columns_file.read_columns(mailbox.path, ("k",), "txmail-records-k")[1], 1)
        self.assertEqual(self.successResultOf(mailbox.cached_records("k", uids)), {uids[3]: ("n", "again")})

    def test_damaged_file(self) -> None:
        """A damaged file gives the records before the damage; the next write makes it whole."""
        mailbox = self.make_mailbox(2)
        uids = [i.uid for i in self.successResultOf(mailbox.list_messages())]
        self.successResultOf(mailbox.cache_records("k", {uids[0]: ("n", "a")}))
        path = os.path.join(mailbox.path, "txmail-records-k")
        with open(path, "ab") as f:
            f.write(b"TXC1 garbage")
        again = self.reopen()
        self.assertEqual(self.successResultOf(again.cached_records("k", uids)), {uids[0]: ("n", "a")})
        self.successResultOf(again.cache_records("k", {uids[1]: ("n", "b")}))
        self.assertEqual(columns_file.read_columns(mailbox.path, ("k",), "txmail-records-k")[1:], (2, False))

    def test_deleted_mailbox_keeps_nothing(self) -> None:
        """cache_records on a deleted mailbox does nothing and does not fail."""
        mailbox = self.make_mailbox(0)
        store = self.successResultOf(self.provider.store_for(USER))
        self.successResultOf(store.create_mailbox("Gone"))
        gone = self.successResultOf(store.get_mailbox("Gone"))
        uid = self.successResultOf(gone.append(generated_messages(1)[0]))
        self.successResultOf(store.delete_mailbox("Gone"))
        self.assertIsNone(self.successResultOf(gone.cache_records("k", {uid: ("n", "x")})))
        self.assertIsNotNone(mailbox)


def _add() -> Any:
    from txmail.model import FlagMode

    return FlagMode.ADD


class RecordTests(SynchronousTestCase):
    def test_round_trip_and_foreign_records(self) -> None:
        """A record of structures gives them back; a record of another shape gives nothing."""
        kept = Structures(b"(NIL)", b'("TEXT" "PLAIN")', b'("TEXT")')
        record = structures.record_of(kept)
        self.assertEqual(structures._from_record(record), kept)
        for other in (
            (),
            ("envelope", "x", "bodystructure", b"", "body", b""),
            record[:4],
            [*record],
            (*record, "a", "b"),
        ):
            self.assertIsNone(structures._from_record(other))


class ComparisonTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.patch(structures, "MANY", 1)
        self.root = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.root)
        self.stores = MaildirProvider(self.root, hostname="test.host", clock=self.clock, watch="off")  # type: ignore[assignment]
        self.mailbox = self.successResultOf(
            self.successResultOf(self.stores.store_for(USER)).get_mailbox("INBOX")
        )
        for body in generated_messages(40):
            self.successResultOf(self.mailbox.append(body, (), 1_600_000_000))

    def answers(self, session: Any = None) -> list[bytes]:
        proto, transport = session or self.login()
        out = []
        for n, line in enumerate(COMPARED):
            reply = self.send(proto, transport, b"c%d " % n + line + b"\r\n")
            self.assertIn(b"\r\nc%d OK " % n, b"\r\n" + reply)
            self.assertEqual(reply.count(b" FETCH ("), 40, line)
            out.append(reply)
        return out

    def test_same_responses(self) -> None:
        """
        The first FETCH renders from the metadata and keeps the records; the
        next ones read no metadata; the octets are those of the metadata path.
        """
        kept: list[int] = []
        original_keep = self.mailbox.cache_records

        def cache_records(kind: str, records: Any) -> Any:
            kept.append(len(records))
            return original_keep(kind, records)

        self.mailbox.cache_records = cache_records  # type: ignore[method-assign]
        session = self.login()  # one session: the same \\Recent each time
        first = self.answers(session)
        self.assertEqual(kept, [40])  # rendered once, by the first FETCH
        asked: list[Any] = []
        original = self.mailbox.get_metadata
        self.mailbox.get_metadata = lambda uids: asked.append(list(uids)) or original(uids)  # type: ignore[method-assign]
        second = self.answers(session)
        self.assertEqual(second, first)
        self.assertEqual(len(asked), len(COMPARED[4:]))  # only the FETCHes that do not use the records
        self.patch(selected, "fetch_uses_structures", lambda *a: False)
        self.assertEqual(self.answers(session), first)

    def test_kept_as_it_goes(self) -> None:
        """A FETCH hands its structures to the store every KEEP_EVERY messages rendered, the rest at its end."""
        self.patch(structures, "KEEP_EVERY", 16)
        self.patch(selected, "KEEP_EVERY", 16)
        self.patch(selected, "BATCH", 8)
        self.patch(selected, "DERIVE_BATCHES", 1)  # structures come a batch at a time
        kept: list[int] = []
        original_keep = self.mailbox.cache_records
        self.mailbox.cache_records = lambda kind, records: (
            kept.append(len(records)) or original_keep(kind, records)
        )  # type: ignore[method-assign]
        proto, transport = self.login()
        transport.clear()
        proto.dataReceived(b"k1 " + COMPARED[0] + b"\r\n")
        while b"k1 OK" not in transport.value():
            self.clock.advance(0)  # the turns FETCH gives between batches
        self.assertEqual(transport.value().count(b" FETCH ("), 40)
        self.assertEqual(kept, [16, 16, 8])

    def small_keeps(self) -> None:
        """Structures kept every 16 messages, FETCHed 8 at a time."""
        self.patch(structures, "KEEP_EVERY", 16)
        self.patch(selected, "KEEP_EVERY", 16)
        self.patch(selected, "BATCH", 8)

    def fetch_turned(self) -> Any:
        """The transport of a FETCH of every message, the clock turned until nothing is left to do."""
        proto, transport = self.login()
        transport.clear()
        proto.dataReceived(b"k1 " + COMPARED[0] + b"\r\n")
        for _ in range(1000):
            self.clock.advance(0)
        return transport

    def test_keeps_not_waited_for(self) -> None:
        """
        The FETCH goes on while the store keeps what it handed over every
        KEEP_EVERY messages (the next structures are asked for meanwhile),
        and ends only when every keep has ended.
        """
        self.small_keeps()
        self.patch(selected, "DERIVE_BATCHES", 1)
        events: list[str] = []
        keeps: list[defer.Deferred[None]] = []
        original_keep = self.mailbox.cache_records

        def keep(kind: str, records: Any) -> defer.Deferred[None]:
            events.append(f"keep {len(records)}")
            d: defer.Deferred[None] = defer.Deferred()
            keeps.append(d)
            return d.addCallback(lambda _: original_keep(kind, records))

        original_derive = self.mailbox.derive_records
        self.mailbox.cache_records = keep  # type: ignore[method-assign]
        self.mailbox.derive_records = lambda uids, fn: (  # type: ignore[method-assign]
            events.append(f"derive {min(uids)}") or original_derive(uids, fn)
        )
        transport = self.fetch_turned()
        # Every batch was asked for although no keep has ended, and the FETCH waits for them.
        self.assertEqual(transport.value().count(b" FETCH ("), 40)
        self.assertNotIn(b"k1 OK", transport.value())
        self.assertLess(events.index("keep 16"), events.index("derive 33"))  # asked after an unended keep
        self.assertEqual(
            [e for e in events if e.startswith("derive")], [f"derive {n}" for n in range(1, 41, 8)]
        )
        self.assertEqual(len(keeps), 2)
        keeps[0].callback(None)
        self.clock.advance(0)
        self.assertNotIn(b"k1 OK", transport.value())
        keeps[1].callback(None)
        for _ in range(100):
            self.clock.advance(0)
            if len(keeps) == 3 and not keeps[2].called:
                keeps[2].callback(None)  # the rest, at the end
        self.assertIn(b"k1 OK", transport.value())
        self.assertEqual([e for e in events if e.startswith("keep")], ["keep 16", "keep 16", "keep 8"])
        uids = [i.uid for i in self.successResultOf(self.mailbox.list_messages())]
        self.assertEqual(len(self.successResultOf(structures.cached_structures(self.mailbox, uids))), 40)

    def test_keep_failure_reported(self) -> None:
        """A keep that fails fails the FETCH at its end, once every answer was sent."""
        self.small_keeps()
        self.mailbox.cache_records = lambda kind, records: defer.fail(  # type: ignore[method-assign]
            OSError("disk full")
        )
        transport = self.fetch_turned()
        self.assertEqual(transport.value().count(b" FETCH ("), 40)
        self.assertIn(b"k1 ", transport.value().rsplit(b"\r\n", 2)[-2])
        self.assertNotIn(b"k1 OK", transport.value())
        self.flushLoggedErrors(OSError)

    def test_new_message_rendered(self) -> None:
        """A message delivered after the records were kept is rendered and kept by the next FETCH."""
        self.answers()
        self.successResultOf(self.mailbox.append(generated_messages(41)[40], (), 1_600_000_000))
        proto, transport = self.login()
        reply = self.send(proto, transport, b"n1 " + COMPARED[0] + b"\r\n")
        self.assertEqual(reply.count(b" FETCH ("), 41)
        uids = [i.uid for i in self.successResultOf(self.mailbox.list_messages())]
        found = self.successResultOf(structures.cached_structures(self.mailbox, uids))
        self.assertEqual(len(found), 41)
