"""Tests for the durable-file helpers in txmail._fs."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from txmail import _fs


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
