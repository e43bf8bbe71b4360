"""
The optional store data of SAVEDATE (RFC 8514) and OBJECTID (RFC 8474):
:class:`txmail.interfaces.ISaveDates` and :class:`txmail.interfaces.IObjectIds`,
kept by the memory and Maildir stores alike (:class:`ObjectIdsMixin`), and
by the Maildir store across restarts, index upgrades and files other
programs drop in (:class:`MaildirObjectIdsTests`).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from tests.store.test_line_ends import write_v1_index
from txmail.interfaces import IObjectIdProvider, IObjectIds, ISaveDates
from txmail.model import DELETED, INBOX, SEEN, FlagMode
from txmail.store import _maildir_io
from txmail.store._ids import derived_email_id
from txmail.store._maildir_format import INDEX_VERSION, parse_index
from txmail.store.maildir import MaildirProvider
from txmail.store.memory import MemoryProvider
from txmail.testing.store import USER, Gen, message

__all__: list[str] = []

#: RFC 8474 section 7 (objectid) and RFC 8620 section 1.2 (a JMAP Id), as the stores make them.
MAILBOX_ID_RE = re.compile(r"F[0-9a-f]{24}")
EMAIL_ID_RE = re.compile(r"M[0-9a-f]{24}")


class ObjectIdsMixin:
    """What both stores keep for SAVEDATE and OBJECTID (mix into a trial ``TestCase``)."""

    assertEqual: Any
    assertNotEqual: Any
    assertTrue: Any
    assertRegex: Any
    assertLessEqual: Any

    def make_provider(self) -> Any:
        raise NotImplementedError

    def reopen(self, provider: Any) -> Any:
        return provider

    def setUp(self) -> None:
        self.provider = self.make_provider()
        self.store = self.successResultOf(self.provider.store_for(USER))

    def box(self, name: str = INBOX, provider: Any = None) -> Any:
        store = self.successResultOf((provider or self.provider).store_for(USER))
        return self.successResultOf(store.get_mailbox(name))  # type: ignore[attr-defined]

    def infos(self, box: Any) -> list[Any]:
        return self.successResultOf(box.list_messages())  # type: ignore[attr-defined,no-any-return]

    def test_interfaces(self) -> None:
        """Mailboxes provide ISaveDates and IObjectIds, with a well-formed MAILBOXID; the provider says so."""
        self.assertTrue(IObjectIdProvider.providedBy(self.provider))
        box = self.box()
        self.assertTrue(verifyObject(ISaveDates, box))
        self.assertTrue(verifyObject(IObjectIds, box))
        self.assertRegex(box.mailbox_id, MAILBOX_ID_RE)

    def test_append_save_date_and_email_id(self) -> None:
        """RFC 8514 section 3: the save date is when it was saved, not the internal date; each message its own EMAILID."""
        box = self.box()
        before = time.time()
        for n in (1, 2):
            self.successResultOf(box.append(message(n), (), 1_000_000_000.0))  # type: ignore[attr-defined]
        first, second = self.infos(box)
        self.assertEqual(first.internal_date, 1_000_000_000.0)
        self.assertTrue(before - 1 <= first.save_date <= time.time() + 1)
        self.assertRegex(first.email_id, EMAIL_ID_RE)
        self.assertNotEqual(first.email_id, second.email_id)

    def test_flags_keep_ids(self) -> None:
        """RFC 8514 section 3: a flag change keeps the save date; the EMAILID never changes."""
        box = self.box()
        uid = self.successResultOf(box.append(message(1)))  # type: ignore[attr-defined]
        (before,) = self.infos(box)
        (changed,) = self.successResultOf(box.set_flags([uid], [SEEN], FlagMode.ADD))  # type: ignore[attr-defined]
        self.assertEqual((changed.save_date, changed.email_id), (before.save_date, before.email_id))

    def test_copy_and_move_keep_email_id(self) -> None:
        """RFC 8474 section 5.1: COPY and MOVE keep the EMAILID; the copy gets a new save date (RFC 8514 section 3)."""
        box = self.box()
        self.successResultOf(self.store.create_mailbox("Archive"))  # type: ignore[attr-defined]
        target = self.box("Archive")
        uids = [self.successResultOf(box.append(message(n))) for n in (1, 2)]  # type: ignore[attr-defined]
        sources = self.infos(box)
        self.successResultOf(box.copy([uids[0]], target))  # type: ignore[attr-defined]
        self.successResultOf(box.move([uids[1]], target))  # type: ignore[attr-defined]
        copied = self.infos(target)
        self.assertEqual([i.email_id for i in copied], [i.email_id for i in sources])
        for source, copy in zip(sources, copied, strict=True):
            self.assertLessEqual(source.save_date, copy.save_date)

    def test_mailbox_id_rename_delete(self) -> None:
        """RFC 8474 section 4: RENAME keeps the MAILBOXID (children too); a re-created name gets a new one."""
        self.successResultOf(self.store.create_mailbox("Work/Old"))  # type: ignore[attr-defined]
        parent, child = self.box("Work").mailbox_id, self.box("Work/Old").mailbox_id
        self.assertNotEqual(parent, child)
        self.successResultOf(self.store.rename_mailbox("Work", "Job"))  # type: ignore[attr-defined]
        self.assertEqual(self.box("Job").mailbox_id, parent)
        self.assertEqual(self.box("Job/Old").mailbox_id, child)
        self.successResultOf(self.store.delete_mailbox("Job/Old"))  # type: ignore[attr-defined]
        self.successResultOf(self.store.create_mailbox("Job/Old"))  # type: ignore[attr-defined]
        self.assertNotEqual(self.box("Job/Old").mailbox_id, child)

    def test_rename_inbox(self) -> None:
        """RENAME INBOX moves its messages into a new mailbox (new MAILBOXID); INBOX keeps its own and the EMAILIDs stay."""
        inbox = self.box()
        self.successResultOf(inbox.append(message(1)))  # type: ignore[attr-defined]
        (info,) = self.infos(inbox)
        inbox_id = inbox.mailbox_id
        self.successResultOf(self.store.rename_mailbox(INBOX, "Old"))  # type: ignore[attr-defined]
        old = self.box("Old")
        self.assertNotEqual(old.mailbox_id, inbox_id)
        self.assertEqual(self.box().mailbox_id, inbox_id)
        self.assertEqual([i.email_id for i in self.infos(old)], [info.email_id])

    def test_ids_survive_reopen(self) -> None:
        """RFC 8474 sections 4 and 5.1: ids are persistent; so is the save date (RFC 8514 section 3)."""
        box = self.box()
        self.successResultOf(box.append(message(1)))  # type: ignore[attr-defined]
        (info,) = self.infos(box)
        box2 = self.box(provider=self.reopen(self.provider))
        self.assertEqual(box2.mailbox_id, box.mailbox_id)
        (info2,) = self.infos(box2)
        self.assertEqual((info2.save_date, info2.email_id), (info.save_date, info.email_id))


class MemoryObjectIdsTests(ObjectIdsMixin, TestCase):
    def make_provider(self) -> Any:
        return MemoryProvider()


class MaildirObjectIdsTests(ObjectIdsMixin, TestCase):
    def make_provider(self) -> Any:
        self.root = self.mktemp()
        return self.reopen(None)

    def reopen(self, provider: Any) -> Any:
        return MaildirProvider(self.root, hostname="test.host", clock=task.Clock(), watch="poll")

    def user_dir(self, folder: str = "") -> str:
        return os.path.join(self.root, "example.test", "alice", folder)

    def test_mailbox_id_file(self) -> None:
        """The MAILBOXID is the folder's txmail-mailboxid; a damaged file is replaced by a new id, written."""
        box = self.box()
        path = os.path.join(self.user_dir(), _maildir_io.MAILBOX_ID)
        with open(path) as f:
            self.assertEqual(f.read(), box.mailbox_id + "\n")
        with open(path, "w") as f:
            f.write("not an id!\n")
        box2 = self.box(provider=self.reopen(None))
        self.assertRegex(box2.mailbox_id, MAILBOX_ID_RE)
        self.assertNotEqual(box2.mailbox_id, box.mailbox_id)
        with open(path) as f:
            self.assertEqual(f.read(), box2.mailbox_id + "\n")

    def test_index_records(self) -> None:
        """The index (version 3) holds each message's save date and EMAILID, also after a rewrite."""
        box = self.box()
        uids = [self.successResultOf(box.append(message(n))) for n in (1, 2)]
        self.successResultOf(box.set_flags(uids[:1], [DELETED], FlagMode.ADD))
        self.successResultOf(box.expunge())
        self.successResultOf(box._compact())
        with open(os.path.join(self.user_dir(), "txmail-index"), "rb") as f:
            parsed = parse_index(f.read())
        self.assertEqual(parsed.version, INDEX_VERSION)
        (info,) = self.infos(box)
        (rec,) = parsed.records.values()
        self.assertEqual((rec.save_date, rec.email_id), (info.save_date, info.email_id))

    def test_dropped_in_file(self) -> None:
        """
        A file another program dropped in is saved when txmail first takes
        it in (not the file's time), and gets an EMAILID derived from its
        name, the same if the index is lost and the file taken in again.
        """
        box = self.box()
        name = "1600000000.other.host"
        path = os.path.join(self.user_dir(), "new", name)
        with open(path, "wb") as f:
            f.write(message(1))
        os.utime(path, (1_600_000_000, 1_600_000_000))
        before = time.time()
        self.successResultOf(box.refresh())
        (info,) = self.infos(box)
        self.assertEqual(info.internal_date, 1_600_000_000)
        self.assertTrue(before - 1 <= info.save_date <= time.time() + 1)
        self.assertEqual(info.email_id, derived_email_id(name))
        os.unlink(os.path.join(self.user_dir(), "txmail-index"))
        (again,) = self.infos(self.box(provider=self.reopen(None)))
        self.assertEqual(again.email_id, info.email_id)

    def test_older_index_upgraded(self) -> None:
        """An index from before SAVEDATE and OBJECTID: the internal date is the save date, the EMAILID derived, kept."""
        box = self.box()
        self.successResultOf(box.append(message(1), (), 1_500_000_000.0))
        (base,) = os.listdir(os.path.join(self.user_dir(), "new"))
        write_v1_index(
            os.path.join(self.user_dir(), "txmail-index"),
            box.uidvalidity,
            [(1, len(message(1)), 1_500_000_000.0, -1, 0, base, frozenset())],
        )
        (info,) = self.infos(self.box(provider=self.reopen(None)))
        self.assertEqual(
            (info.uid, info.save_date, info.email_id), (1, 1_500_000_000.0, derived_email_id(base))
        )
        with open(os.path.join(self.user_dir(), "txmail-index"), "rb") as f:
            self.assertEqual(parse_index(f.read()).version, INDEX_VERSION)
        (again,) = self.infos(self.box(provider=self.reopen(None)))
        self.assertEqual((again.save_date, again.email_id), (info.save_date, info.email_id))

    def test_bad_email_id_in_index(self) -> None:
        """An A record whose EMAILID is not an objectid marks the index damaged (rebuilt from the files)."""
        box = self.box()
        self.successResultOf(box.append(message(1)))
        with open(os.path.join(self.user_dir(), "txmail-index"), "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        fields = lines[-2].split(b"\t")
        fields[-1] = b"bad id!"
        lines[-2] = b"\t".join(fields)
        parsed = parse_index(b"\n".join(lines))
        self.assertTrue(parsed.damaged)
        self.assertEqual(parsed.records, {})

    @defer.inlineCallbacks
    def test_copy_between_stores_of_one_provider(self) -> Gen:
        """A copy to another user's store also keeps the EMAILID (the same backend links the file)."""
        box = self.box()
        uid = yield box.append(message(1))
        other = yield (yield self.provider.store_for("bob@example.test")).get_mailbox(INBOX)
        yield box.copy([uid], other)
        (source,) = yield box.list_messages()
        (copy,) = yield other.list_messages()
        self.assertEqual(copy.email_id, source.email_id)
