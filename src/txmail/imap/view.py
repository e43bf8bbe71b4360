"""
What one IMAP session knows of its selected mailbox (RFC 3501 sections 2.3.1.2,
5.2 and 7.4.1).

Theory of operation
-------------------
A store deals in UIDs only; message sequence numbers are per session.  A
:class:`SelectedView` holds the session's picture of the mailbox: the UIDs in
sequence order, the flags the client was last told, and which messages are
``\\Recent`` in this session.  Changes made by anyone (this session, another
session, SMTP delivery) reach the view as :mod:`txmail.model` change events
through :meth:`SelectedView.queue`; they are *not* applied at once, because
the client's sequence numbers must stay stable while it cannot be told:

* :meth:`SelectedView.updates` applies what is queued and returns the
  untagged responses that tell the client (``EXPUNGE``, ``EXISTS``,
  ``RECENT``, ``FETCH (FLAGS ...)``), in that order.  The session calls it
  when a command completes, on NOOP/CHECK, and at once while idling.
* ``EXPUNGE`` is never sent while responding to FETCH, STORE or SEARCH
  (RFC 3501 section 7.4.1): with ``allow_expunge=False`` removals stay
  queued and the expunged messages keep their sequence numbers.
* The picture is compared, not replayed: a change the client was already
  told about (this session's own STORE and EXPUNGE responses update the
  view directly) produces nothing.  So the same change arriving twice, or
  a listing that already holds a message whose arrival is also queued, is
  harmless.

Sessions that see the same mailbox state share it (issue 12 section 4: a
thousand clients selecting the same 5,000-message INBOX).  At selection the
listing becomes a :class:`_Snapshot`, an immutable UID array (``array('I')``)
and flags table; a snapshot with the same contents made by an earlier
selection of a mailbox of that name and UIDVALIDITY (still in use by some
view) is taken instead of the new one.  A view copies the UID array only
when its own sequence numbers change (an EXPUNGE or EXISTS it tells its
client), and keeps flags that differ from the snapshot's in a small
per-view overlay (:class:`_Flags`); until then a view costs a few hundred
bytes however large the mailbox.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import bisect
import weakref
from array import array
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

from txmail.imap import serialize
from txmail.imap.responses import Exists, Expunged, FetchFlags, Recent, Response, Vanished
from txmail.imap.types import SequenceSet
from txmail.model import (
    SYSTEM_FLAGS,
    FlagsChanged,
    MailboxChange,
    MailboxDeleted,
    MessageInfo,
    MessagesAdded,
    MessagesExpunged,
)

__all__ = ["SelectedView", "SequenceError"]


#: The system flags in the order FLAGS lists them.
_SYSTEM_ORDER = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class SequenceError(ValueError):
    """A message sequence number is not in use (RFC 3501 section 9: answer BAD)."""


class _Snapshot:
    """
    A mailbox listing shared by the views that selected it: never changed.

    Attributes:
        uids: the UIDs, ascending, as ``array('I')`` (UIDs are 32-bit, RFC
            3501 section 2.3.1.1).
        flags: the flags of each UID.
        known: every flag in use, system flags included.
    """

    __slots__ = ("__weakref__", "flags", "known", "uids")

    def __init__(self, uids: array[int], flags: dict[int, frozenset[str]]) -> None:
        self.uids = uids
        self.flags = flags
        # Stores share one frozenset among messages with the same flags, so
        # the distinct sets are few and found in C (about 1.5 ms per 100,000
        # messages).
        self.known = frozenset(SYSTEM_FLAGS.union(*set(flags.values())))

    def same(self, uids: array[int], infos: list[MessageInfo]) -> bool:
        """This snapshot holds exactly *uids* with the flags of *infos*."""
        if self.uids != uids:
            return False
        flags = self.flags
        return all(flags[info.uid] == info.flags for info in infos)


#: The latest snapshot of each (mailbox name, UIDVALIDITY), while a view uses it.
_SNAPSHOTS: weakref.WeakValueDictionary[tuple[str, int], _Snapshot] = weakref.WeakValueDictionary()


def _snapshot(name: str, uidvalidity: int, infos: list[MessageInfo]) -> _Snapshot:
    """A snapshot of *infos*: the one already shared when it holds the same."""
    uids = array("I", [info.uid for info in infos])
    key = (name, uidvalidity)
    shared = _SNAPSHOTS.get(key)
    if shared is not None and shared.same(uids, infos):
        return shared
    snap = _Snapshot(uids, {info.uid: info.flags for info in infos})
    _SNAPSHOTS[key] = snap
    return snap


_MISSING = object()
_NO_FLAGS: frozenset[str] = frozenset()


class _Flags(MutableMapping[int, frozenset[str]]):
    """
    A view's flags by UID: a shared snapshot's table, never written, under
    this view's own changes (``None`` for a UID removed).  Writing the
    flags a UID already has changes nothing (FETCH FLAGS writes what it
    shows).  Once the changes are a sizeable part of the whole they are
    folded into a private table, written in place from then on.
    """

    __slots__ = ("_base", "_len", "_own", "_private")

    def __init__(self, base: dict[int, frozenset[str]]) -> None:
        self._base = base
        self._own: dict[int, frozenset[str] | None] = {}
        self._len = len(base)
        self._private = False

    def __getitem__(self, uid: int) -> frozenset[str]:
        value = self._own.get(uid, _MISSING)
        if value is _MISSING:
            return self._base[uid]
        if value is None:
            raise KeyError(uid)
        return value  # type: ignore[return-value]  # not _MISSING nor None: a flag set

    def get(self, uid: int, default: Any = None) -> Any:
        value = self._own.get(uid, _MISSING)
        if value is _MISSING:
            return self._base.get(uid, default)
        return default if value is None else value

    def __contains__(self, uid: object) -> bool:
        value = self._own.get(uid, _MISSING)  # type: ignore[call-overload]  # any key is looked up; a non-int one is simply missing
        if value is _MISSING:
            return uid in self._base
        return value is not None

    def count_of(self, uids: set[int]) -> int:
        """How many of *uids* are keys (in C while this view changed none)."""
        if not self._own:
            return len(self._base.keys() & uids)
        return sum(1 for u in uids if u in self)

    def __setitem__(self, uid: int, flags: frozenset[str]) -> None:
        base = self._base
        if base.get(uid) is flags and uid not in self._own:
            return  # the common case: FETCH FLAGS writing what the view holds
        if self._private:
            base[uid] = flags
            return
        own = self._own
        value = own.get(uid, _MISSING)
        if value is _MISSING:
            old = base.get(uid, _MISSING)
            if old is flags or old == flags:
                return
            if old is _MISSING:
                self._len += 1
        elif value is None:
            self._len += 1
        if uid in base and base[uid] == flags:
            del own[uid]  # back to the snapshot's
            return
        own[uid] = flags
        self._fold()

    def __delitem__(self, uid: int) -> None:
        if uid not in self:
            raise KeyError(uid)
        self._len -= 1
        if self._private:
            del self._base[uid]
            return
        if uid in self._base:
            self._own[uid] = None
            self._fold()
        else:
            del self._own[uid]

    def __iter__(self) -> Iterator[int]:
        own = self._own
        base = self._base
        for uid in base:
            if own.get(uid, _MISSING) is not None:
                yield uid
        for uid, value in own.items():
            if value is not None and uid not in base:
                yield uid

    def __len__(self) -> int:
        return len(self._base) if self._private else self._len

    def _fold(self) -> None:
        own = self._own
        if len(own) > 64 and len(own) * 8 > len(self._base):
            merged = {uid: flags for uid, flags in self._base.items() if uid not in own}
            merged.update((uid, flags) for uid, flags in own.items() if flags is not None)
            self._base = merged
            self._own = {}
            self._private = True


class SelectedView:
    """
    One session's picture of its selected mailbox.

    Args:
        name: the mailbox's canonical name.
        uidvalidity: its UIDVALIDITY.
        messages: the listing at selection time, ascending UIDs.
        read_only: selected with EXAMINE (or not writable).
        recent: UIDs that are ``\\Recent`` in this session (claimed by it,
            or for a read-only view not claimed by anyone yet).

    Attributes:
        uids: UIDs in sequence order (sequence number ``n`` is ``uids[n-1]``),
            an ``array('I')`` that may be shared with other views: read it,
            never change it.
        flags: the flags the client was last told, by UID (a mapping that
            may be written).
        recent: the UIDs that are ``\\Recent`` in this session.
        deleted: the mailbox was deleted while selected.
        highest_modseq: the largest mod-sequence seen (RFC 7162): the
            mailbox's HIGHESTMODSEQ at selection (:meth:`set_highest_modseq`)
            raised by each change queued since.
        condstore: CONDSTORE is enabled (RFC 7162 section 3.1): flag
            changes are told with ``UID`` and ``MODSEQ``.
        qresync: QRESYNC is enabled (RFC 7162 section 3.2.10): expunges
            are told with ``* VANISHED uids`` instead of ``* n EXPUNGE``.
        shows_recent: ``\\Recent`` and ``RECENT`` exist in this session
            (not after ENABLE IMAP4rev2, RFC 9051 section 2.3.2).
        saved: the UIDs of the saved search result ``$`` (RFC 5182
            section 2.1), empty until a ``SEARCH RETURN (SAVE)``.
    """

    def __init__(
        self,
        name: str,
        uidvalidity: int,
        messages: Iterable[MessageInfo],
        *,
        read_only: bool = False,
        recent: Iterable[int] = (),
    ) -> None:
        self.name = name
        self.uidvalidity = uidvalidity
        self.read_only = read_only
        snap = _snapshot(name, uidvalidity, list(messages))
        self._snapshot: _Snapshot | None = snap
        self.uids: array[int] = snap.uids
        self.flags: _Flags = _Flags(snap.flags)
        #: Every flag in use since selection: the system flags and keywords;
        #: after selection only changed flags are looked at.
        self.known_flags: set[str] = set(snap.known)
        self.recent: set[int] = {u for u in recent if u in self.flags}
        self.deleted = False
        self._added: dict[int, frozenset[str]] = {}
        self._expunged: set[int] = set()
        self._flag_changes: dict[int, frozenset[str]] = {}
        self._flag_modseqs: dict[int, int] = {}
        self.highest_modseq = 0
        self.condstore = False
        self.qresync = False
        #: Flag changes are told with their UID (NOTIFY FlagChange, RFC 5465 section 5.1).
        self.flags_with_uid = False
        self._told_exists = len(self.uids)
        self._told_recent = len(self.recent)
        self.shows_recent = True
        self.saved: frozenset[int] = frozenset()

    # -- numbers -------------------------------------------------------------------

    def _own_uids(self) -> array[int]:
        """:attr:`uids`, copied first if still the shared snapshot's."""
        if self._snapshot is not None:
            self.uids = array("I", self.uids)
            self._snapshot = None
        return self.uids

    def _recent_count(self) -> int:
        return self.flags.count_of(self.recent)

    @property
    def exists(self) -> int:
        """Messages the client knows of."""
        return len(self.uids)

    @property
    def max_uid(self) -> int:
        """The largest UID the client knows of (``*`` in a UID set), 0 if none."""
        return self.uids[-1] if self.uids else 0

    def seq_of(self, uid: int) -> int | None:
        """The sequence number of *uid*, or ``None``."""
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def resolve(self, seqset: SequenceSet, *, uid: bool) -> list[tuple[int, int]]:
        """
        ``(sequence number, UID)`` pairs of *seqset*, ascending.

        For message numbers, a number above the mailbox size is an error
        (RFC 3501 section 9: ``seq-number`` must be in use).  For UIDs, unknown
        UIDs are left out silently and ``n:*`` includes the last message
        even when ``n`` is larger (RFC 3501 section 6.4.8).

        Raises:
            SequenceError: a message number is not in use.
        """
        if seqset.saved:
            # RFC 5182 section 2.1: the saved messages still there, UID or not.
            found = ((self.seq_of(u), u) for u in sorted(self.saved))
            return [(seq, u) for seq, u in found if seq is not None]
        if uid:
            top = self.max_uid
            if not top:
                return []
            # Each span of the set is found by bisection: the cost follows
            # the spans and the messages they hold, not spans x messages.
            out: list[tuple[int, int]] = []
            uids = self.uids
            for lo, hi in seqset.spans(top):
                start = bisect.bisect_left(uids, lo)
                end = bisect.bisect_right(uids, hi)
                out.extend((i + 1, uids[i]) for i in range(start, end))
            return out
        count = len(self.uids)
        for first, last in seqset.ranges:
            for n in (first, last):
                if n is not None and n > count:
                    raise SequenceError("Invalid message sequence number")
        if count == 0:
            # "*" in an empty mailbox names no message (RFC 3501 section 6.4.5 note).
            raise SequenceError("No messages")
        return [(n, self.uids[n - 1]) for n in seqset.expand(count)]

    # -- flags and keywords (RFC 3501 sections 6.3.1 and 7.2.6) -----------------------

    def flag_lists(self) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        """
        FLAGS and PERMANENTFLAGS (``None``: empty): the system flags and
        every keyword in use in the mailbox; ``\\*`` (new keywords may be
        made) unless the view is read-only, where PERMANENTFLAGS is empty.
        """
        keywords = sorted(self.known_flags - SYSTEM_FLAGS)
        flags = (*_SYSTEM_ORDER, *keywords)
        return flags, None if self.read_only else (*flags, "\\*")

    def flag_responses(self) -> bytes:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS ...]`` of :meth:`flag_lists`."""
        return serialize.flags_and_permanent(*self.flag_lists())

    def new_flags(self, *flag_sets: Iterable[str]) -> bytes:
        """
        Note the flags of *flag_sets* as in use; when one of them is a
        keyword the client has not been told of, the new
        :meth:`flag_responses` (RFC 3501 section 7.2.6: FLAGS is sent again
        when the applicable flags change), else ``b""``.  Costs the size of
        the sets given, not of the mailbox.
        """
        known = self.known_flags
        fresh = False
        for flags in flag_sets:
            if not known.issuperset(flags):
                known.update(flags)
                fresh = True
        return self.flag_responses() if fresh else b""

    # -- changes from the store ------------------------------------------------------

    def set_highest_modseq(self, modseq: int) -> None:
        """Raise :attr:`highest_modseq` to *modseq* (never lowers it)."""
        if modseq > self.highest_modseq:
            self.highest_modseq = modseq

    def queue(self, change: MailboxChange) -> None:
        """Remember *change* until the client can be told (see the module docstring)."""
        if isinstance(change, MessagesAdded):
            for info in change.messages:
                self.set_highest_modseq(info.modseq)
                if info.uid not in self.flags and info.uid not in self._expunged:
                    self._added[info.uid] = info.flags
        elif isinstance(change, FlagsChanged):
            for info in change.messages:
                self.set_highest_modseq(info.modseq)
                if info.uid in self._added:
                    self._added[info.uid] = info.flags
                else:
                    self._flag_changes[info.uid] = info.flags
                    self._flag_modseqs[info.uid] = info.modseq
        elif isinstance(change, MessagesExpunged):
            self.set_highest_modseq(change.highest_modseq)
            for u in change.uids:
                if self._added.pop(u, None) is None and u in self.flags:
                    self._expunged.add(u)
                self._flag_changes.pop(u, None)
                self._flag_modseqs.pop(u, None)
        elif isinstance(change, MailboxDeleted):
            self.deleted = True

    def claimed_recent(self, uids: Iterable[int]) -> None:
        """
        *uids* are ``\\Recent`` in this session (told at the next
        :meth:`updates`): it claimed them, or, read-only, shows them without
        claiming (RFC 3501 section 6.3.2).
        """
        if self.shows_recent:
            self.recent.update(uids)

    def forget_recent(self) -> None:
        """No ``\\Recent`` and no ``RECENT`` from now on (IMAP4rev2, RFC 9051 section 2.3.2)."""
        self.shows_recent = False
        self.recent.clear()
        self._told_recent = 0

    @property
    def has_updates(self) -> bool:
        """Something is queued that the client has not been told."""
        return bool(
            self._added
            or self._expunged
            or self._flag_changes
            or self._told_exists != len(self.uids)
            or self._told_recent != self._recent_count()
        )

    def updates(self, *, allow_expunge: bool = True) -> bytes:
        """
        Apply what is queued and return the untagged responses telling the
        client: ``EXPUNGE`` (only with *allow_expunge*), ``EXISTS``,
        ``RECENT``, then ``FETCH (FLAGS ...)`` for flags that changed.
        """
        out: list[bytes] = []
        out.append(self.new_flags(*self._added.values(), *self._flag_changes.values()))
        if allow_expunge and self._expunged:
            gone = sorted(self._expunged)
            self._expunged.clear()
            if self.qresync:
                out.extend(serialize.render(self.expunge_response(gone)))
            else:
                out.extend(self.expunged(gone))
        if self._added:
            top = self.max_uid
            for u in sorted(self._added):
                flags = self._added[u]
                if u in self.flags:
                    continue
                if u < top:
                    # Arrived out of UID order (never from a conforming store);
                    # sequence numbers only grow at the end.
                    continue
                self._own_uids().append(u)
                self.flags[u] = flags
                top = u
            self._added.clear()
        if self._told_exists != len(self.uids):
            self._told_exists = len(self.uids)
            out.append(serialize.render(Exists(len(self.uids)))[0])
        recent = self._recent_count()
        if self._told_recent != recent:
            self._told_recent = recent
            out.append(serialize.render(Recent(recent))[0])
        if self._flag_changes:
            changes = sorted(self._flag_changes.items())
            self._flag_changes.clear()
            modseqs = self._flag_modseqs
            self._flag_modseqs = {}
            for u, flags in changes:
                seq = self.seq_of(u)
                if seq is None or self.flags.get(u) == flags:
                    continue
                self.flags[u] = flags
                if self.condstore:
                    # RFC 7162 section 3.1: with UID and MODSEQ once enabled.
                    out.append(self.fetch_flags(seq, u, with_uid=True, modseq=modseqs.get(u)))
                else:
                    out.append(self.fetch_flags(seq, u, with_uid=self.flags_with_uid))
        return b"".join(out)

    def expunge(self, uids: Iterable[int]) -> list[int]:
        """
        Remove *uids* (ascending) from the picture; the sequence number of
        each as the client counts it, every number counted after the
        removals before it (RFC 3501 section 7.4.1): the ``EXPUNGE``
        responses to send, in order.
        """
        numbers = []
        for u in uids:
            self._expunged.discard(u)
            seq = self.seq_of(u)
            if seq is None:
                continue
            del self._own_uids()[seq - 1]
            del self.flags[u]
            self.recent.discard(u)
            self._flag_changes.pop(u, None)
            self._flag_modseqs.pop(u, None)
            self._told_exists -= 1
            numbers.append(seq)
        self._told_recent = min(self._told_recent, self._recent_count())
        return numbers

    def expunge_response(self, uids: Iterable[int]) -> Response:
        """
        :meth:`expunge` *uids* (ascending) and tell it: ``* n EXPUNGE``
        each, or with QRESYNC enabled ``* VANISHED uids`` of those the
        client knew (RFC 7162 section 3.2.10).
        """
        if not self.qresync:
            return Expunged(tuple(self.expunge(uids)))
        known = [u for u in uids if u in self.flags]
        self.expunge(known)
        return Vanished(tuple(known))

    def expunged(self, uids: Iterable[int]) -> Iterator[bytes]:
        """:meth:`expunge`, yielding one ``* n EXPUNGE`` line each."""
        for seq in self.expunge(uids):
            yield serialize.expunge(seq)

    def display_flags(self, uid: int, flags: Iterable[str]) -> tuple[str, ...]:
        """*flags* as shown to this session: ``\\Recent`` added where it applies."""
        shown = sorted(flags)
        if uid in self.recent:
            shown.append("\\Recent")
        return tuple(shown)

    def fetch_flags(self, seq: int, uid: int, *, with_uid: bool = False, modseq: int | None = None) -> bytes:
        """``* seq FETCH ([UID u ]FLAGS (...)[ MODSEQ (m)])`` for what the view holds of *uid*."""
        return serialize.fetch_flags(
            seq, self.display_flags(uid, self.flags.get(uid, _NO_FLAGS)), uid if with_uid else None, modseq
        )

    def flags_fetched(
        self, seq: int, uid: int, *, with_uid: bool = False, modseq: int | None = None
    ) -> FetchFlags:
        """:meth:`fetch_flags` as a typed response."""
        return FetchFlags(
            seq, self.display_flags(uid, self.flags.get(uid, _NO_FLAGS)), uid if with_uid else None, modseq
        )
