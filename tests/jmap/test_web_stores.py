"""
The upload store (:mod:`txmail.web.blobs`) and the bearer tokens
(:mod:`txmail.web.tokens`): expiry, bounds, isolation, hashing.
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txmail.web.blobs import BlobStore, UploadStorageFull
from txmail.web.tokens import TokenStore


class BlobStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.root = self.mktemp()
        self.blobs = BlobStore(self.root, now=self.clock.seconds, max_blobs=3, max_bytes=100)

    def put(self, account: str, data: bytes, type: str = "text/plain") -> dict:
        return self.successResultOf(self.blobs.put(account, data, type))

    def test_put_get(self) -> None:
        answer = self.put("a1", b"\x00binary\r\n", "application/pdf")
        self.assertEqual(
            {k: answer[k] for k in ("accountId", "type", "size")},
            {"accountId": "a1", "type": "application/pdf", "size": 9},
        )
        self.assertRegex(answer["blobId"], r"^U[A-Za-z0-9_-]{24}$")
        self.assertEqual(self.successResultOf(self.blobs.get("a1", answer["blobId"])), b"\x00binary\r\n")
        # Stored under the account, one file a blob, nothing left half-written.
        self.assertEqual(os.listdir(os.path.join(self.root, "a1")), [answer["blobId"]])
        # Another account does not have it.
        self.assertIsNone(self.successResultOf(self.blobs.get("a2", answer["blobId"])))
        self.assertIsNone(self.successResultOf(self.blobs.get("a1", "Unope")))

    def test_ids_never_reach_outside(self) -> None:
        secret = os.path.join(os.path.dirname(os.path.abspath(self.root)), "secret")
        with open(secret, "w") as f:
            f.write('{"created": 1e12}\nsecret')
        for account, blob_id in (
            ("..", "secret"),
            ("a1", "../../secret"),
            ("a1/..", "x"),
            ("", "x"),
            ("a1", ""),
        ):
            self.assertIsNone(self.successResultOf(self.blobs.get(account, blob_id)))
        self.failureResultOf(self.blobs.put("../x", b"data", "text/plain"), ValueError)

    def test_expiry(self) -> None:
        blob_id = self.put("a1", b"data")["blobId"]
        self.clock.advance(3599)
        self.assertEqual(self.successResultOf(self.blobs.get("a1", blob_id)), b"data")
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(self.blobs.get("a1", blob_id)))
        # The next upload to the account deletes it.
        other = self.put("a1", b"more")["blobId"]
        self.assertEqual(os.listdir(os.path.join(self.root, "a1")), [other])

    def test_bounds(self) -> None:
        for _ in range(3):
            self.put("a1", b"x")
        self.failureResultOf(self.blobs.put("a1", b"x", "text/plain"), UploadStorageFull)
        # Another account has its own bound.
        self.put("a2", b"x" * 100)
        self.failureResultOf(self.blobs.put("a2", b"x", "text/plain"), UploadStorageFull)
        # Expired blobs make room.
        self.clock.advance(3600)
        self.put("a1", b"x" * 100)

    def test_sweep(self) -> None:
        self.put("a1", b"one")
        self.clock.advance(1800)
        kept = self.put("a2", b"two")["blobId"]
        self.clock.advance(1800)
        self.assertEqual(self.successResultOf(self.blobs.sweep()), 1)
        self.assertEqual(sorted(os.listdir(self.root)), ["a2"])
        self.assertEqual(self.successResultOf(self.blobs.get("a2", kept)), b"two")

    def test_survives_restart(self) -> None:
        blob_id = self.put("a1", b"kept")["blobId"]
        again = BlobStore(self.root, now=self.clock.seconds)
        self.assertEqual(self.successResultOf(again.get("a1", blob_id)), b"kept")


class TokenStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tokens = TokenStore(self.clock.seconds, idle_timeout=100, max_per_user=2, max_tokens=3)

    def test_issue_and_lookup(self) -> None:
        token = self.tokens.issue("alice")
        self.assertNotEqual(token, self.tokens.issue("alice"))
        self.assertEqual(self.tokens.user_for(token), "alice")
        self.assertIsNone(self.tokens.user_for("made-up"))
        # Only the digest is kept.
        self.assertIn(hashlib.sha256(token.encode()).hexdigest(), self.tokens._tokens)
        self.assertNotIn(token, self.tokens._tokens)

    def test_idle_expiry(self) -> None:
        token = self.tokens.issue("alice")
        self.clock.advance(99)
        self.assertEqual(self.tokens.user_for(token), "alice")
        self.clock.advance(99)
        self.assertEqual(self.tokens.user_for(token), "alice")
        self.clock.advance(100)
        self.assertIsNone(self.tokens.user_for(token))
        self.assertEqual(len(self.tokens), 0)

    def test_stamp(self) -> None:
        token = self.tokens.issue("alice", "s1")
        self.assertEqual(self.tokens.lookup(token), ("alice", "s1"))
        self.assertIsNone(self.tokens.lookup("made-up"))

    def test_revoke(self) -> None:
        token = self.tokens.issue("alice")
        self.assertTrue(self.tokens.revoke(token))
        self.assertIsNone(self.tokens.user_for(token))
        self.assertFalse(self.tokens.revoke(token))

    def test_bounds(self) -> None:
        first = self.tokens.issue("alice")
        second = self.tokens.issue("alice")
        third = self.tokens.issue("alice")
        # At most two a user: the least recently used went.
        self.assertIsNone(self.tokens.user_for(first))
        self.assertEqual(self.tokens.user_for(second), "alice")
        bob = self.tokens.issue("bob")
        carol = self.tokens.issue("carol")
        # At most three in all.
        self.assertEqual(len(self.tokens), 3)
        self.assertIsNone(self.tokens.user_for(third))
        self.assertEqual((self.tokens.user_for(bob), self.tokens.user_for(carol)), ("bob", "carol"))
