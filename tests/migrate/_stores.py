"""Stores for the migration tests, filled and compared synchronously (their Deferreds fire inline)."""

from __future__ import annotations

import os
from typing import Any

from txmail.migrate._store import wait
from txmail.model import INBOX, SpecialUse
from txmail.store.maildir import MaildirProvider
from txmail.store.memory import MemoryProvider

USER = "alice@example.test"

#: (folder, role): odd names included (non-ASCII, a dot, a percent sign, an ampersand, blanks).
FOLDERS = [
    ("Archive/2024", None),
    ("Drafts", SpecialUse.DRAFTS),
    ("Empty", None),
    ("Entwürfe & Notizen", None),
    ("Sent", SpecialUse.SENT),
    ("v1.2 100%", None),
    ("日本語/下", None),
]

#: (folder, message, flags, internal date)
MESSAGES = [
    (
        INBOX,
        b"From: bob@example.test\r\nSubject: one\r\nMessage-ID: <1@x>\r\n\r\nHello.\r\n",
        set(),
        1_600_000_000,
    ),
    (
        INBOX,
        b"From: carol@example.test\r\nSubject: two\r\n\r\nFrom the start,\r\n>From quoted\r\n\r\n",
        {"\\Seen", "\\Flagged", "$Label1", "project-x"},
        1_600_000_100,
    ),
    # bare LF line ends, as another Maildir writer leaves them
    (INBOX, b"Subject: lf\nX-Thing: y\n\nline one\nline two\n", {"\\Answered", "\\Seen"}, 1_600_000_200),
    ("Archive/2024", b"Subject: archived\r\n\r\nold\r\n", {"\\Seen", "\\Deleted"}, 1_500_000_000),
    ("Drafts", b"Subject: draft\r\n\r\nnot yet\r\n", {"\\Draft"}, 1_600_000_300),
    ("Entwürfe & Notizen", b"Subject: =?utf-8?q?Entw=C3=BCrfe?=\r\n\r\nx\r\n", {"$Junk"}, 1_600_000_400),
    ("Sent", b"Subject: sent\r\nTo: x@example.test\r\n\r\nbody\r\n", {"\\Seen"}, 1_600_000_500),
    ("v1.2 100%", b"Subject: dots\r\n\r\n.\r\n", set(), 1_600_000_600),
    ("日本語/下", b"Subject: kana\r\n\r\n\xe3\x81\x82\r\n", {"\\Seen", "$MDNSent"}, 1_600_000_700),
]


def memory_store(user: str = USER) -> Any:
    return wait(MemoryProvider().store_for(user))


def maildir_store(path: str, user: str = USER) -> Any:
    return wait(MaildirProvider(path).store_for(user))


def fill(store: Any) -> None:
    """Put :data:`FOLDERS` and :data:`MESSAGES` into *store*, subscribe to a few."""
    for name, role in FOLDERS:
        wait(store.create_mailbox(name, special_use=role))
    for name, data, flags, date in MESSAGES:
        box = wait(store.get_mailbox(name))
        wait(box.append(data, flags, date))
    for name in ("Sent", "Entwürfe & Notizen", "日本語/下"):
        wait(store.subscribe(name))


def snapshot(store: Any, *, roles: bool = True, subscriptions: bool = True) -> dict[str, Any]:
    """What a migration must keep: per selectable folder its messages (octets as served, flags, date)."""
    out: dict[str, Any] = {}
    for info in wait(store.list_mailboxes("*")):
        if not info.selectable:
            continue
        box = wait(store.get_mailbox(info.name))
        messages = []
        for m in wait(box.list_messages()):
            messages.append((wait(box.read_message(m.uid)), sorted(m.flags), int(m.internal_date), m.size))
        out[info.name] = {"messages": sorted(messages)}
        if roles:
            out[info.name]["role"] = info.special_use
    if subscriptions:
        out["subscriptions"] = sorted(wait(store.subscriptions()))
    return out


def tree_files(root: str) -> dict[str, bytes]:
    """Every file under *root* with its content."""
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


#: The octets of :data:`MESSAGES` as stores serve them (CRLF).
TOTAL_BYTES = sum(len(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")) for _, data, _, _ in MESSAGES)
