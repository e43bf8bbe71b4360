"""
The message facts of RFC 5256 (SORT and THREAD) and its two threading
algorithms, on plain data: no store, no I/O.

* :func:`base_subject`: the base subject of section 2.1, with whether the
  subject marked a reply or forward (section 2.1's last paragraph, used by
  THREAD=REFERENCES step 5).
* :func:`sent_date`: the sent date of section 2.2 (the ``Date:`` field in
  UTC; ``None`` when missing or invalid, the caller then uses the
  internal date).
* :func:`message_ids`: the ``msg-id`` values of ``Message-ID``,
  ``References`` and ``In-Reply-To``.
* :func:`thread_id`: the THREADID of RFC 8474 section 5.2, from the same
  fields.
* :func:`ordered_subject` and :func:`references`: the algorithms of
  section 3, on :class:`ThreadMessage` records, giving the threads as
  nested ``(number, children)`` tuples (``number`` is ``None`` for a dummy
  parent, which RFC 5256 shows as a thread list without a number).
  :func:`txmail.imap.serialize.thread_response` writes them.

Strings are compared with the ``i;ascii-casemap`` collation (RFC 4790
section 9.2): :func:`casemap` gives the UTF-8 octets with ASCII letters
upper-cased, and the keys are compared as octet strings.

Nothing here recurses on the depth of a thread: a chain of thousands of
replies (or a hostile ``References`` field) is walked with explicit stacks.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from txmail.imap.search import _decode_field

__all__ = [
    "ThreadMessage",
    "ThreadNode",
    "base_subject",
    "casemap",
    "message_ids",
    "ordered_subject",
    "references",
    "sent_date",
    "thread_id",
]

#: A thread: ``(message number or None for a dummy, children)``.
ThreadNode = tuple[int | None, tuple[Any, ...]]


def casemap(text: str) -> bytes:
    """The ``i;ascii-casemap`` sort key of *text*: UTF-8, ASCII letters upper-cased."""
    return text.encode("utf-8", "surrogatepass").upper()  # bytes.upper() touches ASCII only


# -- base subject (RFC 5256 section 2.1) --------------------------------------------------

_SPACES_RE = re.compile(r"[ \t\r\n]+")
# subj-trailer = "(fwd)" / WSP: see base_subject.
# subj-leader = (*subj-blob subj-refwd) / WSP
# subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
# subj-blob = "[" *BLOBCHAR "]" *WSP ; BLOBCHAR = any CHAR except "[" and "]"
_BLOB = r"\[[^\[\]]*\] *"
_LEADER_RE = re.compile(rf"(?:(?:{_BLOB})*(?:re|fwd?) *(?:{_BLOB})?:| )", re.IGNORECASE)
_BLOB_RE = re.compile(_BLOB)
_LEADER_STARTS = frozenset("[rRfF ")
# subj-fwd-hdr = "[fwd:" ; subj-fwd-trl = "]"
_FWD_HDR = "[FWD:"


def base_subject(raw: str | None) -> tuple[str, bool]:
    """
    The base subject of a ``Subject:`` field's raw value (RFC 5256 section
    2.1), and whether the message is a reply or forward: the extraction
    removed a ``subj-refwd``, a ``(fwd)`` trailer or a ``[fwd: ...]``
    wrapper.  A missing subject is the empty string.

    1. RFC 2047 encoded-words decoded, tabs and line breaks made spaces,
       runs of spaces made one.
    2. Trailers ``(fwd)`` and spaces removed, repeatedly.
    3. Leaders (``re:``, ``fw:``, ``fwd:``, each possibly with ``[blob]``\\ s
       before and one after, or a space) removed, and
    4. a leading ``[blob]`` removed when something is left after it;
    5. steps 3 and 4 repeated until neither applies.
    6. ``[fwd: ...]`` unwrapped, then again from step 2.
    """
    if not raw:
        return "", False
    # A stored field value ends with its line's CRLF (or LF): not a fold.
    body = raw[:-2] if raw.endswith("\r\n") else raw[:-1] if raw.endswith("\n") else raw
    if "=?" in body or "\n" in body or "\r" in body or not body.isascii():
        text = _SPACES_RE.sub(" ", _decode_field(raw))
    else:  # the usual subject: nothing to decode or unfold
        text = body.strip(" \t")
        if "  " in text or "\t" in text:
            text = _SPACES_RE.sub(" ", text)
    reply = False
    while True:
        # (2) the trailers.
        while True:
            if text.endswith(" "):
                text = text[:-1]
            elif text[-5:].lower() == "(fwd)":
                text = text[:-5]
                reply = True
            else:
                break
        # (3), (4), (5): leaders and blobs at the start.
        while text[:1] in _LEADER_STARTS:
            m = _LEADER_RE.match(text)
            if m is not None:
                if m.group() != " ":
                    reply = True
                text = text[m.end() :]
                continue
            m = _BLOB_RE.match(text)
            if m is not None and text[m.end() :].strip(" "):
                text = text[m.end() :]
                continue
            break
        # (6) [fwd: ...]
        if len(text) >= 6 and text[:5].upper() == _FWD_HDR and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text, reply


# -- sent date (RFC 5256 section 2.2) -----------------------------------------------------

_EPOCH_DAY = datetime.date(1970, 1, 1).toordinal()
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
# The usual form, parsed without email.utils (a SORT (DATE) of 100,000 messages): the
# date ("1 Dec 2026"), the time, the zone.
_DATE_RE = re.compile(
    r"\s*(?:[A-Za-z]{3}\s*,\s*)?(\d{1,2}\s+[A-Za-z]{3}\s+\d{4})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?\s+([+-])(\d{2})(\d{2})(?:\s|\(|$)"
)
#: The date part of :data:`_DATE_RE` as spelt -> its days since 1970-01-01, or ``None`` for
#: no such day (31 February: email.utils decides); most messages of a mailbox share their
#: day with others (bounded: cleared when full).
_DAYS: dict[str, int | None] = {}
_DAYS_LIMIT = 4096


def _days(text: str) -> int | None:
    """The days since 1970-01-01 of *text* (``1 Dec 2026``: :data:`_DATE_RE`'s first group), or ``None``."""
    days = _DAYS.get(text, _DAYS)
    if days is not _DAYS:
        return days  # type: ignore[return-value]  # _DAYS is the miss sentinel; any other value is a day number
    day, mon, year = text.split()
    month = _MONTHS.get(mon.upper())
    try:
        days = None if month is None else datetime.date(int(year), month, int(day)).toordinal() - _EPOCH_DAY
    except ValueError:
        days = None
    if len(_DAYS) >= _DAYS_LIMIT:
        _DAYS.clear()
    _DAYS[text] = days
    return days


def sent_date(raw: str | None) -> float | None:
    """
    The sent date of a ``Date:`` field's raw value as a POSIX timestamp (so
    normalized to UTC, RFC 5256 section 2.2), or ``None`` when the field is
    missing or cannot be parsed.
    """
    if raw is None:
        return None
    m = _DATE_RE.match(raw)
    if m is not None:
        date, hh, mm, ss, sign, oh, om = m.groups()
        days = _DAYS.get(date)
        if days is None:
            days = _days(date)
        h, mi, sec = int(hh), int(mm), int(ss or 0)
        if days is not None and h < 24 and mi < 60 and sec <= 60:
            offset = (int(oh) * 60 + int(om)) * 60
            when = days * 86400 + h * 3600 + mi * 60 + sec
            return float(when - offset if sign == "+" else when + offset)
    try:
        parsed = email.utils.parsedate_tz(" ".join(raw.split()))
        if parsed is None:
            return None
        datetime.datetime(*parsed[:6])  # ValueError for 31 February and the like
        return float(email.utils.mktime_tz(parsed))
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


# -- message ids (RFC 5256 section 3, REFERENCES step 1) ------------------------------

_MSG_ID_RE = re.compile(r"<([^<>]*)>")
_WSP_RE = re.compile(r"\s+")
# The usual form: no white space inside, something either side of the first "@".
_PLAIN_ID_RE = re.compile(r"<([^<>\s@]+@[^<>\s]+)>")


def message_ids(raw: str | None) -> list[str]:
    """
    The valid ``msg-id`` values of a field, in order, without the angle
    brackets and white space: ``<local@domain>`` with something either side
    of the ``@``.  Text outside angle brackets (comments, phrases in an old
    ``In-Reply-To``) is skipped.
    """
    if not raw:
        return []
    plain = _PLAIN_ID_RE.findall(raw)
    if len(plain) == raw.count("<"):
        # Each "<" opens a usual id, so the general loop below would find these.
        return plain
    out = []
    for mid in _MSG_ID_RE.findall(raw):
        if _WSP_RE.search(mid) is not None:
            mid = _WSP_RE.sub("", mid)
        at = mid.find("@")
        if 0 < at < len(mid) - 1:
            out.append(mid)
    return out


# -- threading -----------------------------------------------------------------------------


@dataclass(slots=True)
class ThreadMessage:
    """
    What the threading algorithms know of one message.

    Attributes:
        number: what the response shows (sequence number or UID).
        order: its position in the mailbox (the sequence number), the last
            tie-breaker of every comparison (RFC 5256 section 3).
        date: the sent date, or the internal date when it has none.
        subject: the base subject as a :func:`casemap` key.
        reply: the subject marked a reply or forward.
        message_id: its ``Message-ID`` (``None`` when missing or invalid).
        parents: its ``References``, or the first ``In-Reply-To`` id when
            ``References`` holds none, oldest first.
    """

    number: int
    order: int
    date: float
    subject: bytes
    reply: bool = False
    message_id: str | None = None
    parents: Sequence[str] = ()


def ordered_subject(messages: Iterable[ThreadMessage]) -> list[ThreadNode]:
    """
    THREAD=ORDEREDSUBJECT (RFC 5256 section 3): messages grouped by base
    subject, each group in sent date order; the first message is the root
    and the others its children; threads in the order of their roots'
    sent dates.
    """
    ordered = sorted(messages, key=lambda m: (m.subject, m.date, m.order))
    threads: list[tuple[tuple[float, int], ThreadNode]] = []
    group: list[ThreadMessage] = []
    for m in [*ordered, None]:
        if group and (m is None or m.subject != group[0].subject):
            root = group[0]
            children = tuple((c.number, ()) for c in group[1:])
            threads.append(((root.date, root.order), (root.number, children)))
            group = []
        if m is not None:
            group.append(m)
    threads.sort(key=lambda t: t[0])
    return [node for _, node in threads]


class _Container:
    """A container of the REFERENCES algorithm: a message, or a dummy (``msg`` None)."""

    __slots__ = ("children", "msg", "parent")

    def __init__(self, msg: ThreadMessage | None = None) -> None:
        self.msg = msg
        self.parent: _Container | None = None
        self.children: list[_Container] = []


def _is_ancestor(a: _Container, b: _Container) -> bool:
    """Whether *a* is *b* or one of its ancestors."""
    node: _Container | None = b
    while node is not None:
        if node is a:
            return True
        node = node.parent
    return False


def _unlink(child: _Container) -> None:
    parent = child.parent
    if parent is not None:
        parent.children.remove(child)
        child.parent = None


def _link(parent: _Container, child: _Container) -> None:
    child.parent = parent
    parent.children.append(child)


def _post_order(roots: Sequence[_Container]) -> list[_Container]:
    """Every container under *roots*, each after its descendants."""
    order: list[_Container] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    order.reverse()
    return order


def _first_message(c: _Container) -> ThreadMessage | None:
    """The message of *c*, or of its first child for a dummy (RFC 5256 section 3 step 5)."""
    if c.msg is not None:
        return c.msg
    return c.children[0].msg if c.children else None


def references(messages: Iterable[ThreadMessage]) -> list[ThreadNode]:
    """
    THREAD=REFERENCES (RFC 5256 section 3): *messages* in mailbox order.

    1. Containers by Message-ID: each message's references linked
       parent to child, oldest first, never making a loop nor moving a
       container that already has a parent (1A); the message made a child
       of its last reference, its earlier parent link broken (1B).  A
       message without a valid Message-ID, or with one already seen, gets a
       container of its own.
    2. The root set: containers without a parent.
    4. Dummies (referenced, never seen) pruned: one without children
       removed, one with children replaced by them, except at the root
       where only one with a single child is.
    5. Roots with the same base subject gathered under one root or dummy.
    6. Siblings sorted by sent date (a dummy by its first child's).
    """
    table: dict[str, _Container] = {}
    containers: list[_Container] = []

    def container(mid: str) -> _Container:
        c = table.get(mid)
        if c is None:
            c = table[mid] = _Container()
            containers.append(c)
        return c

    for msg in messages:
        # (1) The message's own container.
        mid = msg.message_id
        this = table.get(mid) if mid is not None else None
        if this is None or this.msg is not None:
            this = _Container(msg)
            containers.append(this)
            if mid is not None and mid not in table:
                table[mid] = this
        else:
            this.msg = msg
        # (1A) Link the references in order.
        prev: _Container | None = None
        for ref in msg.parents:
            c = container(ref)
            if prev is not None and c.parent is None and not _is_ancestor(c, prev):
                _link(prev, c)
            prev = c
        # (1B) The last reference is the message's parent.
        _unlink(this)
        if prev is not None and not _is_ancestor(this, prev):
            _link(prev, this)
    table.clear()  # (3)

    # (2) The root set, in the order the containers were made.
    roots = [c for c in containers if c.parent is None]

    # (4) Prune dummies, bottom-up (children before their parents).
    for node in _post_order(roots):
        if not node.children:
            continue
        kept: list[_Container] = []
        for child in node.children:
            if child.msg is None:
                for grandchild in child.children:
                    grandchild.parent = node
                kept.extend(child.children)
            else:
                kept.append(child)
        node.children = kept
    pruned: list[_Container] = []
    for root in roots:
        if root.msg is None:
            if not root.children:
                continue
            if len(root.children) == 1:
                only = root.children[0]
                only.parent = None
                pruned.append(only)
                continue
        pruned.append(root)
    roots = pruned

    # (5) Gather the roots by base subject.
    subjects: dict[bytes, _Container] = {}
    for root in roots:
        first = _first_message(root)
        if first is None or not first.subject:
            continue
        old = subjects.get(first.subject)
        if (
            old is None
            or (root.msg is None and old.msg is not None)
            or (old.msg is not None and old.msg.reply and root.msg is not None and not root.msg.reply)
        ):
            subjects[first.subject] = root
    gathered: list[_Container] = []
    for root in roots:
        if root.parent is not None:
            continue  # already put under an earlier root of its subject
        first = _first_message(root)
        old = subjects.get(first.subject) if first is not None and first.subject else None
        if old is None or old is root:
            gathered.append(root)
            continue
        if old.msg is None and root.msg is None:
            for child in root.children:
                child.parent = old
            old.children.extend(root.children)
        elif old.msg is None or (root.msg is not None and root.msg.reply and not old.msg.reply):
            # A dummy takes the message; a first message takes its replies.
            _link(old, root)
        else:
            dummy = _Container()
            _link(dummy, old)
            _link(dummy, root)
            assert first is not None
            subjects[first.subject] = dummy
            gathered.append(dummy)
    # Roots put under a dummy made after them are no longer roots.
    roots = [root for root in gathered if root.parent is None]

    # (6) Sort the siblings by sent date, bottom-up so that a dummy's
    # first child is known before the dummy is placed.
    def key(c: _Container) -> tuple[float, int]:
        m = c.msg if c.msg is not None else c.children[0].msg
        assert m is not None
        return (m.date, m.order)

    for node in _post_order(roots):
        if len(node.children) > 1:
            node.children.sort(key=key)
    roots.sort(key=key)
    return _freeze(roots)


def _freeze(roots: list[_Container]) -> list[ThreadNode]:
    """The trees under *roots* as nested ``(number, children)`` tuples."""
    frozen: dict[int, ThreadNode] = {}
    for node in _post_order(roots):
        number = node.msg.number if node.msg is not None else None
        children = node.children
        frozen[id(node)] = (number, tuple([frozen.pop(id(c)) for c in children]) if children else ())
    return [frozen[id(root)] for root in roots]


# -- THREADID (RFC 8474 section 5.2) -------------------------------------------------------


def thread_id(headers: Sequence[tuple[str, str]], email_id: str | None = None) -> str | None:
    """
    The THREADID of a message (RFC 8474 section 5.2) from its header
    fields: the root of its thread is the first id of its ``References``
    (RFC 5322 section 3.6.4 keeps the thread's first message there), else
    the first of ``In-Reply-To``, else its own ``Message-ID``; the id is
    ``T`` and 96 bits of the BLAKE2b hash of that root, so that every reply
    that names the same first message shares it, and it never changes (the
    header fields do not).  A message with none of these fields is a thread
    of its own, named after its *email_id* (``None`` without one).  The
    form (a letter and 24 hexadecimal digits) is a valid JMAP ``Id``.
    """
    fields: dict[str, str] = {}
    for name, value in headers:
        key = name.strip(" \t").lower()
        if key in ("references", "in-reply-to", "message-id") and key not in fields:
            fields[key] = value
    for key in ("references", "in-reply-to", "message-id"):
        ids = message_ids(fields.get(key))
        if ids:
            root = "<" + ids[0] + ">"
            break
    else:
        if email_id is None:
            return None
        root = email_id
    return "T" + hashlib.blake2b(root.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
