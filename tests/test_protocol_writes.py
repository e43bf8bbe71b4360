"""Tests for the write fast path of ``txmail._protocol`` (replies straight to the socket)."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from txmail._protocol import _buffered


class BufferedTests(SynchronousTestCase):
    def test_empty_buffers(self) -> None:
        """Nothing in either of tcp.Server's write buffers: not buffered."""
        self.assertFalse(_buffered(SimpleNamespace(_tempDataLen=0, dataBuffer=b"abc", offset=3)))

    def test_pending_bytes(self) -> None:
        """Bytes in the list buffer or unsent in the byte buffer: buffered."""
        self.assertTrue(_buffered(SimpleNamespace(_tempDataLen=5, dataBuffer=b"", offset=0)))
        self.assertTrue(_buffered(SimpleNamespace(_tempDataLen=0, dataBuffer=b"abc", offset=1)))

    def test_unknown_transport(self) -> None:
        """A transport without those attributes counts as buffered: writing is left to it."""
        self.assertTrue(_buffered(SimpleNamespace()))
        self.assertTrue(_buffered(SimpleNamespace(_tempDataLen="0", dataBuffer=b"", offset=0)))
