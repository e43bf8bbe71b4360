"""Tests for the durable-file helpers in txmail._fs."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from txmail import _fs
from txmail.model import MessageSource
from txmail.testing.sources import streamed_source


class LinkOrCopyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.src = os.path.join(self.dir, "src")
        with open(self.src, "wb") as f:
            f.write(b"message")
        self.synced: list[int] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            self.synced.append(os.fstat(fd).st_ino)
            real(fd)

        self.patch(os, "fsync", fsync)

    def test_unsynced_source_is_linked_then_synced(self) -> None:
        """An unsynced file is hard-linked and the shared inode fsynced."""
        dst = os.path.join(self.dir, "dst")
        _fs.link_or_copy(self.src, dst, src_fsynced=False)
        self.assertEqual(os.stat(dst).st_ino, os.stat(self.src).st_ino)
        self.assertEqual(self.synced, [os.stat(dst).st_ino])

    def test_synced_source_is_only_linked(self) -> None:
        """A file the caller already synced is linked without another fsync."""
        dst = os.path.join(self.dir, "dst")
        _fs.link_or_copy(self.src, dst, src_fsynced=True)
        self.assertEqual(os.stat(dst).st_ino, os.stat(self.src).st_ino)
        self.assertEqual(self.synced, [])

    def test_copy_when_link_fails(self) -> None:
        """When linking is impossible the data is copied and the copy fsynced."""

        def no_link(src: str, dst: str) -> None:
            raise OSError(18, "cross-device link")

        self.patch(os, "link", no_link)
        dst = os.path.join(self.dir, "dst")
        _fs.link_or_copy(self.src, dst, src_fsynced=True)
        with open(dst, "rb") as f:
            self.assertEqual(f.read(), b"message")
        self.assertNotEqual(os.stat(dst).st_ino, os.stat(self.src).st_ino)
        self.assertEqual(len(self.synced), 1)

    def test_write_file_durably(self) -> None:
        """write_file_durably replaces the file whole and syncs file and directory."""
        path = os.path.join(self.dir, "state.json")
        _fs.write_file_durably(path, b"one")
        _fs.write_file_durably(path, b"two")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"two")
        self.assertEqual(sorted(os.listdir(self.dir)), ["src", "state.json"])
        self.assertEqual(len(self.synced), 4)

    def test_store_source_links_a_local_file(self) -> None:
        """store_source hard-links a source's local file (fsynced when the caller had not)."""
        dst = os.path.join(self.dir, "dst")
        _fs.store_source(MessageSource.from_file(self.src, 7, fsynced=False), dst)
        self.assertEqual(os.stat(dst).st_ino, os.stat(self.src).st_ino)
        self.assertEqual(self.synced, [os.stat(dst).st_ino])

    def test_store_source_streams_without_a_file(self) -> None:
        """A source without a local file is streamed into a new file, fsynced, with no temporary file left."""
        data = b"x" * 3_000_000 + b"end\r\n"
        dst = os.path.join(self.dir, "dst")
        _fs.store_source(streamed_source(data, piece=65536), dst)
        with open(dst, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(self.synced, [os.stat(dst).st_ino])
        self.assertEqual(sorted(os.listdir(self.dir)), ["dst", "src"])

    def test_stream_failure_leaves_nothing(self) -> None:
        """A source that fails while it is read leaves neither the target nor a temporary file."""

        class Failing:
            def read(self, n: int) -> bytes:
                raise OSError(5, "I/O error")

        dst = os.path.join(self.dir, "dst")
        self.assertRaises(OSError, _fs.write_stream_durably, Failing(), dst)
        self.assertEqual(os.listdir(self.dir), ["src"])
