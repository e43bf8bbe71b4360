"""
Maildir changes made by other programs while a mailbox is open: the cheap
check (directory times) on get_mailbox, the one more listing owed after a
change in the same timestamp tick, the store's own writes, and the watchers
(polling on an injected clock; inotify on the real reactor).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from txmail.errors import NoSuchMailbox
from txmail.model import INBOX, SEEN, FlagMode, FlagsChanged, MailboxDeleted, MessagesAdded, MessagesExpunged
from txmail.store import _maildir_io as io
from txmail.store._maildir_watch import inotify_supported
from txmail.store.maildir import MaildirProvider
from txmail.testing.store import message

USER = "alice@example.test"
SETTLE = 2.0


class RefreshBase(TestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        self.clock = task.Clock()
        self.provider = self.make_provider()
        self.store = self.successResultOf(self.provider.store_for(USER))
        self.user_dir = os.path.join(self.root, "example.test", "alice")
        self.counter = 0

    def make_provider(self, **kwargs: Any) -> MaildirProvider:
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("watch", "poll")
        return MaildirProvider(self.root, hostname="mx.test", **kwargs)

    def age(self, folder: str = "", seconds: float = 100.0) -> int:
        """Make the folder's directories look last changed *seconds* ago (a settled listing)."""
        then = time.time_ns() - int(seconds * 1e9)
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.user_dir, folder, sub), ns=(then, then))
        return then

    def deliver(self, data: bytes, folder: str = "", sub: str = "new", info: str = "") -> str:
        """Deliver a file as another Maildir program does: write into tmp/, rename into new/."""
        self.counter += 1
        base = f"{1_700_000_000 + self.counter}.M1P2Q{self.counter}.other.host"
        tmp = os.path.join(self.user_dir, folder, "tmp", base)
        with open(tmp, "wb") as f:
            f.write(data)
        name = base + info
        os.rename(tmp, os.path.join(self.user_dir, folder, sub, name))
        return name

    def open_inbox(self) -> Any:
        self.age()
        return self.successResultOf(self.store.get_mailbox(INBOX))

    def again(self, name: str = INBOX) -> Any:
        """Ask for the open mailbox again (what SELECT, STATUS, a POP3 login do)."""
        return self.successResultOf(self.store.get_mailbox(name))


class CheapCheckTests(RefreshBase):
    def test_nothing_changed_no_rescan(self) -> None:
        """Asking for an open, unchanged mailbox lists no directory."""
        box = self.open_inbox()
        self.assertEqual(box.rescans, 1)  # the open
        scans: list[Any] = []
        self.patch(io, "scan_folder", lambda *a: scans.append(a))
        for _ in range(100):
            self.assertIs(self.again(), box)
        self.assertEqual(scans, [])
        self.assertEqual(box.rescans, 1)

    def test_new_file_seen(self) -> None:
        """A file another program delivered into new/ is taken in at the next get_mailbox."""
        box = self.open_inbox()
        events: list[Any] = []
        box.add_listener(events.append)
        self.deliver(message(1))
        self.again()
        self.assertEqual(box.rescans, 2)
        (added,) = [e for e in events if isinstance(e, MessagesAdded)]
        self.assertEqual([i.uid for i in added.messages], [1])
        self.assertEqual(self.successResultOf(box.read_message(1)), message(1))
        self.again()
        self.assertEqual(box.rescans, 2)

    def test_flag_rename_seen(self) -> None:
        """A file renamed in cur/ with other flag letters becomes a flag change."""
        name = self.deliver(message(1), sub="cur", info=":2,")
        box = self.open_inbox()
        events: list[Any] = []
        box.add_listener(events.append)
        cur = os.path.join(self.user_dir, "cur")
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "S"))
        self.again()
        (changed,) = [e for e in events if isinstance(e, FlagsChanged)]
        self.assertEqual([(i.uid, i.flags) for i in changed.messages], [(1, frozenset({SEEN}))])

    def test_removed_file_expunged(self) -> None:
        """A file another program removed is expunged at the next get_mailbox."""
        name = self.deliver(message(1))
        box = self.open_inbox()
        events: list[Any] = []
        box.add_listener(events.append)
        os.unlink(os.path.join(self.user_dir, "new", name))
        self.again()
        self.assertEqual([e.uids for e in events if isinstance(e, MessagesExpunged)], [(1,)])

    def test_same_tick_change_not_missed(self) -> None:
        """
        A change that leaves the directory time as the last listing saw it
        (the same timestamp tick) is found by the one listing owed once the
        tick is surely over, and at once by a thorough refresh().
        """
        box = self.successResultOf(self.store.get_mailbox(INBOX))  # new/ changed just now: owed
        opened_at = self.provider._now()
        new = os.path.join(self.user_dir, "new")
        mtime = os.stat(new).st_mtime_ns
        self.deliver(message(1))
        os.utime(new, ns=(mtime, mtime))  # the same tick
        self.assertEqual(io.dir_mtimes(box.path), box._stamp.mtimes)
        self.assertIsNotNone(box._stamp.verify_at)
        self.again()
        self.assertEqual(self.successResultOf(box.status()).messages, 0)  # not yet due
        self.patch(self.provider, "_now", lambda: opened_at + int((SETTLE + 0.1) * 1e9))
        self.again()
        self.assertEqual(self.successResultOf(box.status()).messages, 1)
        self.assertIsNone(box._stamp.verify_at)  # listed once the tick was over: settled

    def test_same_tick_thorough_refresh(self) -> None:
        """refresh() lists at once when a listing is owed."""
        box = self.successResultOf(self.store.get_mailbox(INBOX))
        new = os.path.join(self.user_dir, "new")
        mtime = os.stat(new).st_mtime_ns
        self.deliver(message(1))
        os.utime(new, ns=(mtime, mtime))
        self.successResultOf(box.refresh())
        self.assertEqual(self.successResultOf(box.status()).messages, 1)

    def test_own_writes_no_rescan(self) -> None:
        """
        Appends, flag renames, keywords, copies and expunges leave directory
        times the store takes in: checks right after them list nothing; one
        listing is owed once the tick is over (another program's change in
        the same tick), however many writes came before.
        """
        box = self.open_inbox()
        self.successResultOf(self.store.create_mailbox("Archive"))
        self.age(".Archive")
        archive = self.successResultOf(self.store.get_mailbox("Archive"))
        uids = [self.successResultOf(box.append(message(i))) for i in range(5)]
        uids.append(self.successResultOf(box.append(message(9), [SEEN])))
        self.successResultOf(box.set_flags(uids[:2], [SEEN, "$Junk"], FlagMode.ADD))
        self.successResultOf(box.set_flags(uids[2:3], ["\\Deleted"], FlagMode.ADD))
        self.successResultOf(box.copy(uids[:1], archive))
        self.successResultOf(box.move(uids[1:2], archive))
        self.assertEqual(self.successResultOf(box.expunge()), [uids[2]])
        scans: list[Any] = []
        real_scan = io.scan_folder
        self.patch(io, "scan_folder", lambda *a: scans.append(a[0]) or real_scan(*a))
        for _ in range(10):
            self.again()
            self.again("Archive")
        self.assertEqual(scans, [])
        # Once the owed listing's time has come: one each, then none.
        later = self.provider._now() + int((SETTLE + 1) * 1e9)
        self.patch(self.provider, "_now", lambda: later)
        for _ in range(10):
            self.again()
            self.again("Archive")
        self.assertEqual(sorted(scans), sorted([box.path, archive.path]))
        self.assertEqual(self.successResultOf(box.status()).messages, 4)
        self.assertEqual(self.successResultOf(archive.status()).messages, 2)

    def test_own_deliveries_in_flight(self) -> None:
        """
        While our own deliveries are in flight (their files renamed into
        new/, not yet committed), asking for the mailbox again does not list
        it: the directory times are ours.  Another program's change made
        meanwhile is found once IN_FLIGHT_CHECK_NS has passed.
        """
        from txmail.store.maildir import IN_FLIGHT_CHECK_NS

        box = self.open_inbox()
        scans: list[Any] = []
        real_scan = io.scan_folder
        self.patch(io, "scan_folder", lambda *a: scans.append(a[0]) or real_scan(*a))
        self.again()  # a check: nothing changed
        box._pending.add("in-flight")  # a delivery of ours between its rename and its commit
        self.deliver(message(7))
        for _ in range(5):
            self.again()
        self.assertEqual(scans, [])
        later = self.provider._now() + IN_FLIGHT_CHECK_NS + 1
        self.patch(self.provider, "_now", lambda: later)
        self.again()
        self.assertEqual(scans, [box.path])
        self.assertEqual(self.successResultOf(box.status()).messages, 1)
        box._pending.discard("in-flight")

    def test_new_files_take_uids_in_arrival_order(self) -> None:
        """Files another program delivered get UIDs in delivery order, digits compared as numbers."""
        from txmail.store.maildir import arrival_key

        names = ["1700000000.M100000P1Q10.host", "1700000000.M99999P1Q9.host", "1700000001.M5P1Q11.host"]
        self.assertEqual(sorted(names, key=arrival_key), [names[1], names[0], names[2]])
        box = self.open_inbox()
        for name, data in ((names[0], message(2)), (names[2], message(3)), (names[1], message(1))):
            with open(os.path.join(self.user_dir, "new", name), "wb") as f:
                f.write(data)
        self.successResultOf(box.refresh())
        data = [self.successResultOf(box.read_message(uid)) for uid in (1, 2, 3)]
        self.assertEqual(data, [message(1), message(2), message(3)])

    def test_change_during_own_write_is_caught(self) -> None:
        """Another program's delivery between our change's two stats is found by the owed listing."""
        box = self.open_inbox()
        real = io.deliver_bytes

        def racing(*args: Any) -> Any:
            delivered = real(*args)
            self.deliver(message(7))  # lands after our rename, before our second stat
            return delivered

        self.patch(io, "deliver_bytes", racing)
        self.successResultOf(box.append(message(1)))
        self.again()
        later = self.provider._now() + int((SETTLE + 1) * 1e9)
        self.patch(self.provider, "_now", lambda: later)
        self.again()
        self.assertEqual(self.successResultOf(box.status()).messages, 2)

    def test_memory_store_refresh_is_a_noop(self) -> None:
        """The memory store has no other writer: refresh() does nothing."""
        from txmail.store.memory import MemoryProvider

        box = self.successResultOf(self.successResultOf(MemoryProvider().store_for(USER)).get_mailbox(INBOX))
        self.assertIsNone(self.successResultOf(box.refresh()))


class PollingWatcherTests(RefreshBase):
    """Mailboxes with listeners are checked every poll_interval on the injected clock."""

    def test_external_delivery_becomes_an_event(self) -> None:
        box = self.open_inbox()
        events: list[Any] = []
        remove = box.add_listener(events.append)
        self.clock.advance(0.1)  # the first check, right after the watch starts
        self.assertEqual(events, [])
        self.deliver(message(1))
        self.clock.advance(2.0)
        self.assertEqual([type(e) for e in events], [MessagesAdded])
        name = self.deliver(message(2), sub="cur", info=":2,")
        self.clock.advance(2.0)
        self.assertEqual([type(e) for e in events], [MessagesAdded, MessagesAdded])
        cur = os.path.join(self.user_dir, "cur")
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "S"))
        self.clock.advance(2.0)
        self.assertIsInstance(events[-1], FlagsChanged)
        remove()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_burst_is_one_rescan(self) -> None:
        box = self.open_inbox()
        events: list[Any] = []
        box.add_listener(events.append)
        for i in range(100):
            self.deliver(message(i))
        self.clock.advance(0.1)
        self.assertEqual(box.rescans, 2)
        self.assertEqual(sum(len(e.messages) for e in events), 100)
        for _ in range(5):
            self.clock.advance(2.0)
        self.assertLessEqual(box.rescans, 3)  # at most the listing owed after the burst

    def test_unchanged_mailbox_is_not_listed(self) -> None:
        box = self.open_inbox()
        box.add_listener(lambda e: None)
        for _ in range(50):
            self.clock.advance(2.0)
        self.assertEqual(box.rescans, 1)

    def test_watch_stops_with_the_last_listener(self) -> None:
        box = self.open_inbox()
        first = box.add_listener(lambda e: None)
        second = box.add_listener(lambda e: None)
        watcher = self.provider._watcher
        assert watcher is not None
        first()
        self.assertTrue(watcher.watching(box))
        second()
        second()  # twice: harmless
        self.assertFalse(watcher.watching(box))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.deliver(message(1))
        self.clock.advance(10)
        self.assertEqual(box.rescans, 1)

    def test_deleted_mailbox_is_not_watched(self) -> None:
        self.successResultOf(self.store.create_mailbox("Old"))
        box = self.successResultOf(self.store.get_mailbox("Old"))
        box.add_listener(lambda e: None)
        self.successResultOf(self.store.delete_mailbox("Old"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_watch_off(self) -> None:
        provider = self.make_provider(watch="off")
        box = self.successResultOf(self.successResultOf(provider.store_for(USER)).get_mailbox(INBOX))
        box.add_listener(lambda e: None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_mode(self) -> None:
        self.assertRaises(ValueError, self.make_provider, watch="sometimes")


def _wait_for(check: Any, timeout: float = 5.0) -> defer.Deferred[float]:
    """Fire with the seconds it took once check() is true; fail after *timeout*."""
    start = time.monotonic()
    d: defer.Deferred[float] = defer.Deferred()

    def poll() -> None:
        if check():
            d.callback(time.monotonic() - start)
        elif time.monotonic() - start > timeout:
            d.errback(AssertionError("timed out"))
        else:
            reactor.callLater(0.01, poll)

    poll()
    return d


class InotifyWatcherTests(RefreshBase):
    """On Linux, inotify on the real reactor tells of a change within milliseconds."""

    if not inotify_supported():
        skip = "inotify is not available here"

    def make_provider(self, **kwargs: Any) -> MaildirProvider:
        kwargs.setdefault("watch", "inotify")
        kwargs.setdefault("clock", reactor)
        return super().make_provider(**kwargs)

    @defer.inlineCallbacks
    def test_external_delivery_becomes_an_event(self) -> Any:
        box = self.open_inbox()
        events: list[Any] = []
        remove = box.add_listener(events.append)
        self.addCleanup(remove)
        watcher = self.provider._watcher
        assert watcher is not None
        self.assertTrue(watcher.uses_inotify(box))
        yield _wait_for(lambda: box.rescans == 1 and not watcher._watched[box].running)
        self.deliver(message(1))
        took = yield _wait_for(lambda: any(isinstance(e, MessagesAdded) for e in events))
        self.assertLess(took, 1.0)
        name = self.deliver(message(2), sub="cur", info=":2,")
        yield _wait_for(lambda: len(events) == 2)
        cur = os.path.join(self.user_dir, "cur")
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "S"))
        yield _wait_for(lambda: isinstance(events[-1], FlagsChanged))
        remove()
        self.assertIsNone(watcher._inotify)

    @defer.inlineCallbacks
    def test_own_writes_cost_no_rescan(self) -> Any:
        box = self.open_inbox()
        remove = box.add_listener(lambda e: None)
        self.addCleanup(remove)
        for i in range(5):
            yield box.append(message(i))
        yield box.set_flags([1, 2], [SEEN], FlagMode.ADD)
        yield box.expunge()
        rescans = box.rescans
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.3, d.callback, None)
        yield d  # the notices of our own writes were checked meanwhile
        self.assertEqual(box.rescans, rescans)
        watcher = self.provider._watcher
        assert watcher is not None
        call = watcher._watched[box].call
        # The one listing owed after our writes is scheduled, about SETTLE from now.
        self.assertIsNotNone(call)
        self.assertGreater(call.getTime() - reactor.seconds(), 1.0)

    @defer.inlineCallbacks
    def test_folder_removed_behind_our_back(self) -> Any:
        """A watched folder removed by another program: the mailbox is deleted, the other watches stay."""
        self.successResultOf(self.store.create_mailbox("Gone"))
        self.age(".Gone")
        box = self.successResultOf(self.store.get_mailbox("Gone"))
        other = self.open_inbox()
        events: list[Any] = []
        box.add_listener(events.append)
        self.addCleanup(other.add_listener(lambda e: None))
        watcher = self.provider._watcher
        assert watcher is not None
        self.deliver(message(2), folder=".Gone")
        yield _wait_for(lambda: len(events) == 1)
        shutil.rmtree(os.path.join(self.user_dir, ".Gone"))
        yield _wait_for(lambda: any(isinstance(e, MailboxDeleted) for e in events))
        self.assertFalse(watcher.watching(box))
        self.assertTrue(watcher.uses_inotify(other))
        self.failureResultOf(self.store.get_mailbox("Gone"), NoSuchMailbox)
        self.deliver(message(3))
        yield _wait_for(lambda: other.rescans == 2)

    def test_folder_removed_get_mailbox(self) -> None:
        """get_mailbox of an open folder another program removed fails with NoSuchMailbox."""
        self.successResultOf(self.store.create_mailbox("Gone"))
        box = self.successResultOf(self.store.get_mailbox("Gone"))
        events: list[Any] = []
        box.add_listener(events.append)
        shutil.rmtree(os.path.join(self.user_dir, ".Gone"))
        self.failureResultOf(self.store.get_mailbox("Gone"), NoSuchMailbox)
        self.assertEqual([type(e) for e in events], [MailboxDeleted])
