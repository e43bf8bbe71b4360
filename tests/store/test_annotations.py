"""
RFC 5464 annotations in the stores (:class:`txmail.interfaces.IMetadataStore`):
the memory and Maildir stores keep them per mailbox and for the server,
all or none, follow RENAME (INBOX: a copy, section 4.1), drop them with
DELETE, count them per user and tell listeners; the Maildir store keeps
them in a file per folder across restarts.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from txmail.errors import InvalidMailboxName, NoSuchMailbox
from txmail.interfaces import IMetadataStore
from txmail.model import AnnotationsChanged
from txmail.store import _annotations
from txmail.store.maildir import MaildirProvider
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

USER = "alice@example.test"


class AnnotationsMixin:
    """The contract, for any store; ``provider()`` makes the store's provider."""

    def provider(self) -> Any:
        raise NotImplementedError

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.store = yield self.provider().store_for(USER)
        yield self.store.create_mailbox("Work")

    def test_interface(self) -> None:
        """The store provides IMetadataStore."""
        self.assertTrue(verifyObject(IMetadataStore, self.store))

    @defer.inlineCallbacks
    def test_set_get_remove(self) -> Any:
        """Entries are set, replaced and removed (None); the server's are apart ("")."""
        yield self.store.set_annotations("Work", {"/private/comment": b"a", "/shared/comment": b"\x00\xff"})
        yield self.store.set_annotations("", {"/private/comment": b"server"})
        yield self.store.set_annotations("Work", {"/private/comment": b"b", "/shared/comment": None})
        self.assertEqual((yield self.store.get_annotations("Work")), {"/private/comment": b"b"})
        self.assertEqual((yield self.store.get_annotations("")), {"/private/comment": b"server"})
        self.assertEqual((yield self.store.get_annotations("INBOX")), {})
        self.assertEqual((yield self.store.annotation_count()), 2)

    @defer.inlineCallbacks
    def test_missing_mailbox(self) -> Any:
        """Section 3.3: only existing mailboxes have annotations."""
        yield self.assertFailure(self.store.get_annotations("Nope"), NoSuchMailbox)
        yield self.assertFailure(self.store.set_annotations("Nope", {"/private/a": b"1"}), NoSuchMailbox)
        yield self.assertFailure(self.store.get_annotations("../x"), InvalidMailboxName, NoSuchMailbox)

    @defer.inlineCallbacks
    def test_rename_follows(self) -> Any:
        """Section 4.1: the annotations follow RENAME, children's too."""
        yield self.store.create_mailbox("Work/2024")
        yield self.store.set_annotations("Work", {"/private/comment": b"w"})
        yield self.store.set_annotations("Work/2024", {"/private/comment": b"w24"})
        yield self.store.rename_mailbox("Work", "Jobs")
        self.assertEqual((yield self.store.get_annotations("Jobs")), {"/private/comment": b"w"})
        self.assertEqual((yield self.store.get_annotations("Jobs/2024")), {"/private/comment": b"w24"})
        yield self.store.create_mailbox("Work")
        self.assertEqual((yield self.store.get_annotations("Work")), {})
        self.assertEqual((yield self.store.annotation_count()), 2)

    @defer.inlineCallbacks
    def test_rename_inbox_copies(self) -> Any:
        """Section 4.1: renaming INBOX copies its annotations; INBOX keeps them."""
        yield self.store.set_annotations("INBOX", {"/shared/comment": b"in"})
        yield self.store.rename_mailbox("INBOX", "Old")
        self.assertEqual((yield self.store.get_annotations("Old")), {"/shared/comment": b"in"})
        self.assertEqual((yield self.store.get_annotations("INBOX")), {"/shared/comment": b"in"})
        self.assertEqual((yield self.store.annotation_count()), 2)

    @defer.inlineCallbacks
    def test_delete_removes(self) -> Any:
        """Section 4.1: DELETE removes them; a new mailbox of that name starts bare."""
        yield self.store.set_annotations("Work", {"/private/comment": b"w"})
        self.assertEqual((yield self.store.annotation_count()), 1)
        yield self.store.delete_mailbox("Work")
        self.assertEqual((yield self.store.annotation_count()), 0)
        yield self.store.create_mailbox("Work")
        self.assertEqual((yield self.store.get_annotations("Work")), {})

    @defer.inlineCallbacks
    def test_listeners(self) -> Any:
        """Listeners hear the entries that changed, once; removed listeners hear nothing."""
        heard: list[AnnotationsChanged] = []
        remove = self.store.add_annotation_listener(heard.append)
        yield self.store.set_annotations(
            "Work", {"/private/b": b"1", "/private/a": b"2", "/private/none": None}
        )
        yield self.store.set_annotations("Work", {"/private/a": b"2"})  # no change
        yield self.store.set_annotations("", {"/private/a": b"3"})
        remove()
        remove()
        yield self.store.set_annotations("", {"/private/a": None})
        self.assertEqual(
            heard,
            [
                AnnotationsChanged("Work", ("/private/a", "/private/b")),
                AnnotationsChanged("", ("/private/a",)),
            ],
        )


class MemoryAnnotationsTests(AnnotationsMixin, TestCase):
    def provider(self) -> Any:
        return MemoryProvider()


class MaildirAnnotationsTests(AnnotationsMixin, TestCase):
    def provider(self) -> Any:
        self.root = self.mktemp()
        return MaildirProvider(self.root, hostname="mx.test", clock=task.Clock(), watch="poll")

    def user_dir(self) -> str:
        return os.path.join(self.root, "example.test", "alice")

    @defer.inlineCallbacks
    def test_survives_restart(self) -> Any:
        """The files are read again by a new provider (a restart)."""
        yield self.store.set_annotations("Work", {"/private/comment": b"w", "/shared/bin": b"\x00\xff"})
        yield self.store.set_annotations("", {"/private/x": b"s"})
        again = yield MaildirProvider(
            self.root, hostname="mx.test", clock=task.Clock(), watch="poll"
        ).store_for(USER)
        self.assertEqual(
            (yield again.get_annotations("Work")), {"/private/comment": b"w", "/shared/bin": b"\x00\xff"}
        )
        self.assertEqual((yield again.get_annotations("")), {"/private/x": b"s"})
        self.assertEqual((yield again.annotation_count()), 3)

    @defer.inlineCallbacks
    def test_files(self) -> Any:
        """One file per folder beside its index, one for the server; no temporary file left; none when empty."""
        yield self.store.set_annotations("Work", {"/private/comment": b"w"})
        yield self.store.set_annotations("INBOX", {"/private/comment": b"i"})
        yield self.store.set_annotations("", {"/private/comment": b"s"})
        folder = os.path.join(self.user_dir(), ".Work")
        self.assertIn(_annotations.FILE, os.listdir(folder))
        self.assertIn(_annotations.FILE, os.listdir(self.user_dir()))
        self.assertIn(_annotations.SERVER_FILE, os.listdir(self.user_dir()))
        self.assertFalse([n for n in os.listdir(folder) + os.listdir(self.user_dir()) if ".tmp" in n])
        yield self.store.set_annotations("Work", {"/private/comment": None})
        self.assertNotIn(_annotations.FILE, os.listdir(folder))

    @defer.inlineCallbacks
    def test_damaged_file_set_aside(self) -> Any:
        """A damaged file reads as empty and is kept as <file>.damaged, not overwritten."""
        path = os.path.join(self.user_dir(), ".Work", _annotations.FILE)
        with open(path, "wb") as f:
            f.write(b"{not json")
        self.assertEqual((yield self.store.get_annotations("Work")), {})
        self.assertTrue(os.path.exists(path + ".damaged"))
        self.flushLoggedErrors()

    def test_encoding(self) -> None:
        """UTF-8 values are kept as text, others as base64; decode() refuses damage."""
        data = _annotations.encode({"/private/a": "é".encode(), "/private/b": b"\xff\x00"})
        self.assertIn(b'"/private/a": "\\u00e9"', data)
        self.assertIn(b'"base64": "/wA="', data)
        self.assertEqual(_annotations.decode(data), {"/private/a": "é".encode(), "/private/b": b"\xff\x00"})
        for bad in (
            b"[]",
            b'{"entries": {"/private/a": 1}}',
            b'{"entries": {"/private/a": {"base64": "!"}}}',
        ):
            self.assertRaises(ValueError, _annotations.decode, bad)


class MaildirThreadedAnnotationsTests(AnnotationsMixin, TestCase):
    """The same with the file work in threads (the service's setup)."""

    def provider(self) -> Any:
        return MaildirProvider(
            self.mktemp(), hostname="mx.test", run_blocking=deferToThread, clock=task.Clock(), watch="poll"
        )
