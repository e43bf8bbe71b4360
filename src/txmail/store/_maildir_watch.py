"""
Watching open Maildir folders for changes made by other programs.

While a folder has listeners (an IMAP session has it selected, a POP3
session has the maildrop open), :class:`FolderWatcher` watches its
``new/`` and ``cur/`` directories and runs the folder's cheap change check
(:meth:`txmail.store.maildir.MaildirMailbox.refresh_if_changed`), whose
rescan turns what changed into listener events:

* **inotify** (Linux): one inotify descriptor per provider (a few lines of
  ``ctypes`` over libc's ``inotify_init1``/``inotify_add_watch``, read by
  the reactor), two watches per folder.  An event schedules a check
  :data:`COALESCE` seconds later, so that a delivery of 100 files costs
  one rescan.  The descriptor is closed when the last folder stops being
  watched.  ``twisted.internet.inotify`` is not used: it closes its
  descriptor, and with it every watch, when one watched directory is
  removed (a folder deleted by another program would blind every session).
* **polling** elsewhere, or when inotify fails (no libc support, the
  per-user watch limit reached): the check every :data:`POLL_INTERVAL`
  seconds.  The check is three ``stat`` calls (a few microseconds) unless
  something changed.

Events caused by the store's own writes cost a check, not a rescan (the
store remembers the directory times its own changes left).  A change in the
same file system timestamp tick as the last listing cannot be seen in the
times: the store then owes one more listing once the tick is surely over
(:class:`txmail.store._maildir_io.Stamp`), and the watcher checks again at
that moment, so even such a change reaches an IDLE client within
:data:`txmail.store._maildir_io.SETTLE_NS` plus the check delay.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import sys
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorFDSet, IReactorTime, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmail.errors import NoSuchMailbox

if TYPE_CHECKING:
    from txmail.store.maildir import MaildirMailbox

__all__ = ["COALESCE", "POLL_INTERVAL", "FolderWatcher", "Inotify", "inotify_supported"]

#: Seconds between two checks of a watched folder when polling.
POLL_INTERVAL = 2.0
#: Seconds from a change notice to the check (a burst of notices is one check).
COALESCE = 0.05

IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
#: Message files arriving, leaving, or renamed (flag changes); the directory itself going away.
WATCH_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_EVENT = struct.Struct("=iIII")


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        for name in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_LIBC = _libc()


def inotify_supported() -> bool:
    """Whether this platform offers inotify (Linux, through libc)."""
    return _LIBC is not None


@implementer(IReadDescriptor)
class Inotify:
    """
    An inotify descriptor read by the reactor.  ``on_event(wd, mask)`` is
    called for each event (``wd`` -1 for a queue overflow).
    """

    log = Logger()

    def __init__(self, reactor: Any, on_event: Any) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "inotify is not available")
        fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self._fd: int = fd
        self._reactor = reactor
        self._on_event = on_event
        self._buffer = b""
        reactor.addReader(self)

    def add(self, path: str) -> int:
        """Watch the directory *path*; returns the watch descriptor."""
        wd = _LIBC.inotify_add_watch(self._fd, os.fsencode(path), WATCH_MASK)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
        return int(wd)

    def remove(self, wd: int) -> None:
        """Stop a watch (no error when the kernel already dropped it)."""
        if self._fd >= 0:
            _LIBC.inotify_rm_watch(self._fd, wd)

    def close(self) -> None:
        if self._fd >= 0:
            self._reactor.removeReader(self)
            os.close(self._fd)
            self._fd = -1

    # IReadDescriptor

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "inotify"

    def doRead(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            self.log.failure("reading inotify events failed")
            return None
        buf = self._buffer + data
        pos = 0
        while len(buf) - pos >= _EVENT.size:
            wd, mask, _cookie, size = _EVENT.unpack_from(buf, pos)
            if len(buf) - pos < _EVENT.size + size:
                break
            pos += _EVENT.size + size
            try:
                self._on_event(wd, mask)
            except Exception:
                self.log.failure("handling an inotify event failed")
        self._buffer = buf[pos:]
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.close()


class _Watched:
    """One watched folder: its watch descriptors and its next check."""

    __slots__ = ("again", "box", "call", "polling", "running", "wds")

    def __init__(self, box: MaildirMailbox) -> None:
        self.box = box
        self.wds: list[int] = []
        self.call: Any = None
        self.running = False
        self.again = False
        self.polling = True


class FolderWatcher:
    """
    Watch folders with listeners (see the module docstring).

    Args:
        clock: the reactor (``IReactorTime``; inotify also needs
            ``IReactorFDSet``).
        mode: ``"auto"`` (inotify where it works, else polling),
            ``"inotify"`` (the same, named), ``"poll"``.
        poll_interval: seconds between checks when polling.
        coalesce: seconds from a change notice to the check.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        mode: str = "auto",
        poll_interval: float = POLL_INTERVAL,
        coalesce: float = COALESCE,
    ) -> None:
        if mode not in ("auto", "inotify", "poll"):
            raise ValueError(f"unknown watch mode {mode!r}")
        self.clock = clock
        self.mode = mode
        self.poll_interval = poll_interval
        self.coalesce = coalesce
        self._watched: dict[MaildirMailbox, _Watched] = {}
        self._by_wd: dict[int, set[MaildirMailbox]] = {}
        self._inotify: Inotify | None = None
        self._inotify_failed = (
            mode == "poll" or not inotify_supported() or not IReactorFDSet.providedBy(clock)
        )

    def watching(self, box: MaildirMailbox) -> bool:
        return box in self._watched

    def uses_inotify(self, box: MaildirMailbox) -> bool:
        w = self._watched.get(box)
        return w is not None and not w.polling

    def start(self, box: MaildirMailbox) -> None:
        """Watch *box* (no-op when it is already watched)."""
        if box in self._watched:
            return
        w = self._watched[box] = _Watched(box)
        w.polling = not self._add_watches(w)
        # Something may have changed between the last check and the watch.
        self._schedule(w, self.coalesce)

    def stop(self, box: MaildirMailbox) -> None:
        """Stop watching *box* (no-op when it is not watched)."""
        w = self._watched.pop(box, None)
        if w is None:
            return
        if w.call is not None and w.call.active():
            w.call.cancel()
        w.call = None
        self._drop_watches(w)
        if not self._watched and self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    # -- inotify ----------------------------------------------------------

    def _add_watches(self, w: _Watched) -> bool:
        if self._inotify_failed:
            return False
        try:
            if self._inotify is None:
                self._inotify = Inotify(self.clock, self._event)
            for sub in ("new", "cur"):
                wd = self._inotify.add(os.path.join(w.box.path, sub))
                w.wds.append(wd)
                self._by_wd.setdefault(wd, set()).add(w.box)
        except OSError as e:
            self._drop_watches(w)
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                # ENOSPC: the per-user watch limit (fs.inotify.max_user_watches);
                # EMFILE: too many inotify instances.  Poll from now on.
                self.log.warn(
                    "inotify failed ({error}); polling Maildir folders every {interval} s",
                    error=os.strerror(e.errno or 0),
                    interval=self.poll_interval,
                )
                if self._inotify is None or e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOSYS):
                    self._inotify_failed = True
            return False
        return True

    def _drop_watches(self, w: _Watched) -> None:
        for wd in w.wds:
            boxes = self._by_wd.get(wd)
            if boxes is not None:
                boxes.discard(w.box)
                if not boxes:
                    del self._by_wd[wd]
                    if self._inotify is not None:
                        self._inotify.remove(wd)
        w.wds = []

    def _event(self, wd: int, mask: int) -> None:
        if mask & IN_Q_OVERFLOW:
            for each in list(self._watched.values()):
                self._schedule(each, self.coalesce)
            return
        for box in list(self._by_wd.get(wd, ())):
            w = self._watched.get(box)
            if w is None:
                continue
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                # The directory went away (folder deleted or renamed behind
                # our back): poll, the check finds what remains.
                self._by_wd.pop(wd, None)
                w.wds = [x for x in w.wds if x != wd]
                w.polling = True
            self._schedule(w, self.coalesce)

    # -- checks -----------------------------------------------------------

    def _schedule(self, w: _Watched, delay: float) -> None:
        """Check *w* in *delay* seconds, unless a check is due sooner anyway."""
        call = w.call
        if call is not None and call.active():
            if call.getTime() <= self.clock.seconds() + delay:
                return
            call.cancel()
        w.call = self.clock.callLater(delay, self._check, w)

    def _check(self, w: _Watched) -> None:
        w.call = None
        if self._watched.get(w.box) is not w:
            return
        if w.running:
            w.again = True
            return
        w.running = True
        try:
            d = w.box.refresh_if_changed()
        except Exception:
            d = None
            self.log.failure("checking {mailbox} for changes failed", mailbox=w.box.path)

        def done(result: Any) -> None:
            w.running = False
            if isinstance(result, Failure) and not result.check(NoSuchMailbox):
                self.log.failure("checking {mailbox} for changes failed", result, mailbox=w.box.path)
            if self._watched.get(w.box) is not w:
                return
            if w.again:
                w.again = False
                self._schedule(w, self.coalesce)
            self._next(w)

        if d is None:
            done(None)
        else:
            d.addBoth(done)

    def _next(self, w: _Watched) -> None:
        """The next check without a notice: the poll, or a listing the store owes."""
        if w.polling:
            self._schedule(w, self.poll_interval)
            return
        due = w.box._verify_due_in()
        if due is not None:
            self._schedule(w, max(due, self.coalesce))
