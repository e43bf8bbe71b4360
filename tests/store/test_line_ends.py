"""
Maildir files with bare LF line ends (what Postfix's local and virtual,
Dovecot's LDA, procmail and mutt write) are served with CRLF: content,
sizes and metadata (RFC 3501 sections 2.3.4 and 7.4.2), as Dovecot does.
"""

from __future__ import annotations

import builtins
import io
import os
import random
import re
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.store.test_maildir import USER, MaildirBase
from txmail import mime
from txmail.model import INBOX, SEEN, MessageSource
from txmail.store import _crlf, _maildir_io, maildir
from txmail.store._crlf import CRLFFile, bare_lf_count, count_file, to_crlf
from txmail.store._maildir_format import INDEX_VERSION, index_add, index_header, name_sizes, parse_index

LF = b"From: a@b.test\nSubject: lf\n\nline\n"
CRLF = b"From: a@b.test\r\nSubject: lf\r\n\r\nline\r\n"
#: Mixed: CRLF, bare LF, a bare CR, CR CR LF; only the bare LFs change.
MIXED = b"From: a@b.test\r\nSubject: mixed\n\r\none\r\ntwo\nbare\rcr\r\r\nlast"
MIXED_CRLF = b"From: a@b.test\r\nSubject: mixed\r\n\r\none\r\ntwo\r\nbare\rcr\r\r\nlast"
MULTIPART_LF = (
    b"From: a@b.test\n"
    b"Subject: parts\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="b"\n'
    b"\n"
    b"--b\n"
    b"Content-Type: text/plain\n"
    b"\n"
    b"one\n"
    b"two\n"
    b"--b\n"
    b"Content-Type: text/html\n"
    b"\n"
    b"<p>three</p>\n"
    b"--b--\n"
)
_BARE_LF = re.compile(rb"(?<!\r)\n")


def reference(data: bytes) -> bytes:
    """Every LF not after a CR made CRLF, by a regular expression (the specification)."""
    return _BARE_LF.sub(b"\r\n", data)


def random_text(rng: random.Random, n: int) -> bytes:
    return bytes(rng.choice(b"\r\n\r\nab.") for _ in range(n))


class ConversionTests(TestCase):
    """The pure helpers of :mod:`txmail.store._crlf`."""

    def test_reference_cases(self) -> None:
        """Only bare LFs change; CRLF, bare CR and CR CR LF stay."""
        self.assertEqual(to_crlf(LF), CRLF)
        self.assertEqual(to_crlf(CRLF), CRLF)
        self.assertEqual(to_crlf(MIXED), MIXED_CRLF)
        self.assertEqual(to_crlf(b"\r\r\n\n\r"), b"\r\r\n\r\n\r")
        self.assertEqual(bare_lf_count(LF), 4)
        self.assertEqual(bare_lf_count(CRLF), 0)
        self.assertEqual(bare_lf_count(MIXED), 2)
        self.assertEqual(bare_lf_count(b""), 0)
        self.assertEqual(bare_lf_count(b"\nx\n", after_cr=True), 1)  # its CR was before the chunk

    def test_random(self) -> None:
        """Any mix of CR, LF and text converts and counts as the regular expression says."""
        rng = random.Random(3501)
        for _ in range(300):
            data = random_text(rng, rng.randrange(0, 40))
            self.assertEqual(to_crlf(data), reference(data), data)
            self.assertEqual(bare_lf_count(data), len(reference(data)) - len(data), data)

    def test_count_file_across_chunks(self) -> None:
        """Counting a file chunk by chunk: a CRLF cut between two chunks is not a bare LF."""
        self.patch(_crlf, "CHUNK", 3)
        rng = random.Random(2822)
        path = self.mktemp()
        for _ in range(100):
            data = random_text(rng, rng.randrange(0, 30))
            with open(path, "wb") as f:
                f.write(data)
            fd = os.open(path, os.O_RDONLY)
            try:
                self.assertEqual(count_file(fd), (len(data), len(reference(data)) - len(data)), data)
            finally:
                os.close(fd)

    def test_crlf_file_reads(self) -> None:
        """CRLFFile gives the converted content in reads of any size, whatever its chunks."""
        self.patch(_crlf, "READ_CHUNK", 4)
        rng = random.Random(1939)
        for _ in range(100):
            data = random_text(rng, rng.randrange(0, 50))
            want = reference(data)
            self.assertEqual(CRLFFile(io.BytesIO(data)).read(), want)
            f = CRLFFile(io.BytesIO(data), len(want))
            step = rng.randrange(1, 7)
            got = []
            while piece := f.read(step):
                self.assertLessEqual(len(piece), step)
                got.append(piece)
            self.assertEqual(b"".join(got), want)
            self.assertEqual(f.tell(), len(want))
            buffered = io.BufferedReader(CRLFFile(io.BytesIO(data)))
            self.assertEqual(buffered.read(), want)

    def test_crlf_file_seek(self) -> None:
        """tell and seek count converted octets: forward, back, from the end, past the end."""
        self.patch(_crlf, "READ_CHUNK", 5)
        want = reference(MIXED)
        for size in (len(want), None):
            f = CRLFFile(io.BytesIO(MIXED), size)
            self.assertTrue(f.readable())
            self.assertTrue(f.seekable())
            self.assertEqual(f.read(10), want[:10])
            self.assertEqual(f.seek(20), 20)
            self.assertEqual(f.read(7), want[20:27])
            self.assertEqual(f.seek(3), 3)
            self.assertEqual(f.read(), want[3:])
            self.assertEqual(f.seek(-4, os.SEEK_END), len(want) - 4)
            self.assertEqual(f.read(), want[-4:])
            self.assertEqual(f.seek(-2, os.SEEK_CUR), len(want) - 2)
            self.assertEqual(f.read(1), want[-2:-1])
            self.assertEqual(f.seek(len(want) + 10), len(want))
            self.assertEqual(f.read(), b"")
            self.assertRaises(ValueError, f.seek, -1)

    def test_crlf_file_close(self) -> None:
        """Closing the wrapper closes the file under it; a closed wrapper refuses reads."""
        raw = io.BytesIO(LF)
        with CRLFFile(raw) as f:
            self.assertEqual(f.read(4), b"From")
        self.assertTrue(raw.closed)
        self.assertRaises(ValueError, f.read)

    def test_name_sizes(self) -> None:
        """S= and W= of Dovecot's and txmail's file names."""
        self.assertEqual(name_sizes("1.M1P2.host,S=27,W=31"), (27, 31))
        self.assertEqual(name_sizes("1.M1P2Q3.host,S=27"), (27, None))
        self.assertEqual(name_sizes("1.V803I1M2.host"), (None, None))
        self.assertEqual(name_sizes("1.M1.host,W=x,S=5"), (5, None))
        self.assertEqual(name_sizes("1.M1.host,S=\u0661"), (None, None))  # not an ASCII number

    def test_pickup_files_sizes(self) -> None:
        """pickup_files gives file_sizes' sizes and the file's mtime, with and without W=, and skips vanished files."""
        path = self.mktemp()
        os.makedirs(os.path.join(path, "new"))
        contents = [LF, CRLF, MIXED, MULTIPART_LF, b"", b"\n", b"\r", b"x" * 70000 + b"\r\n\n" * 3]
        items = []
        for k, data in enumerate(contents):
            for name in (
                f"{k}.M{k}P1.host,S={len(data)}",
                f"{k}.M{k}P2.host,S={len(data)},W={len(to_crlf(data))}",
            ):
                with open(os.path.join(path, "new", name), "wb") as f:
                    f.write(data)
                items.append(("new", name))
        items.append(("new", "gone.M1P1.host"))
        got = _maildir_io.pickup_files(path, items)
        self.assertEqual(len(got), len(items) - 1)
        for (sub, name, size, raw, date, coff, clen), (isub, iname) in zip(got, items, strict=False):
            full = os.path.join(path, sub, name)
            data = open(full, "rb").read()  # noqa: SIM115
            self.assertEqual((sub, name), (isub, iname))
            self.assertEqual(size, len(to_crlf(data)))
            self.assertEqual(raw, None if size == len(data) else len(data))
            self.assertEqual((size, len(data)), _maildir_io.file_sizes(full, name))
            self.assertEqual((date, coff, clen), (os.stat(full).st_mtime, -1, 0))


def write_v1_index(
    path: str, uidvalidity: int, records: list[tuple[int, int, float, int, int, str, frozenset[str]]]
) -> None:
    """An index as txmail wrote it before the raw size: version 1, nine-field A records."""
    lines = [index_header(uidvalidity, 10, 20, 0).replace(f"\t{INDEX_VERSION}\t", "\t1\t", 1)]
    for uid, size, date, coff, clen, base, flags in records:
        # Without the raw size, save date and EMAILID of versions 2 and 3.
        lines.append(index_add(uid, 5, size, date, coff, clen, base, flags).rsplit("\t", 3)[0] + "\n")
    with open(path, "wb") as f:
        f.write("".join(lines).encode())


class MaildirLineEndTests(MaildirBase):
    """Files with bare LFs in a Maildir are served with CRLF line ends."""

    def check_served(self, box: Any, uid: int, crlf: bytes) -> None:
        """*uid* is served as *crlf*: size, read, open, metadata."""
        (info,) = self.successResultOf(box.list_messages([uid]))
        self.assertEqual(info.size, len(crlf))
        self.assertEqual(self.successResultOf(box.read_message(uid)), crlf)
        f = self.successResultOf(box.open_message(uid))
        try:
            self.assertEqual(f.read(), crlf)
            self.assertEqual(f.seek(0), 0)
            self.assertEqual(f.read(5), crlf[:5])
        finally:
            f.close()
        md = self.successResultOf(box.get_metadata([uid]))[uid]
        self.assertEqual(md, mime.parse_metadata(crlf))

    def test_dropped_lf_file(self) -> None:
        """The issue's example: an LF file dropped into new/ is served with CRLF and its CRLF size."""
        self.successResultOf(self.provider.store_for(USER))
        self.drop("new", "1700000000.V801I2M3.other.host", LF)
        box = self.inbox()
        self.check_served(box, 1, CRLF)
        self.assertEqual(self.successResultOf(box.status()).size, len(CRLF))
        # The file itself is left as it was.
        (name,) = self.files("new")
        with open(os.path.join(self.user_dir, "new", name), "rb") as f:
            self.assertEqual(f.read(), LF)

    def test_mixed_and_multipart(self) -> None:
        """Only bare LFs are converted; BODYSTRUCTURE octets and lines count CRLF."""
        self.successResultOf(self.provider.store_for(USER))
        self.drop("new", "1700000000.a.other.host", MIXED)
        self.drop("cur", "1700000001.b.other.host:2,S", MULTIPART_LF)
        self.drop("new", "1700000002.c.other.host", CRLF)
        box = self.inbox()
        self.check_served(box, 1, MIXED_CRLF)
        multipart = to_crlf(MULTIPART_LF)
        self.check_served(box, 2, multipart)
        self.check_served(box, 3, CRLF)
        self.assertEqual(self.successResultOf(box.list_messages([2]))[0].flags, frozenset({SEEN}))
        structure = self.successResultOf(box.get_metadata([2]))[2].body_structure
        plain, html = structure[0], structure[1]
        # The line end before a delimiter belongs to the delimiter (RFC 2046).
        self.assertEqual(plain[6:8], (len(b"one\r\ntwo"), 2))
        self.assertEqual(html[6:8], (len(b"<p>three</p>"), 1))

    def test_picked_up_by_refresh(self) -> None:
        """A file dropped into an open mailbox gets its CRLF size on refresh too."""
        box = self.inbox()
        self.successResultOf(box.append(CRLF))
        self.drop("new", "1700000000.d.other.host", LF)
        self.successResultOf(box.refresh())
        self.check_served(box, 2, CRLF)

    @defer.inlineCallbacks
    def test_large_file_streams(self) -> Any:
        """A message above the inline read size: read in the thread pool, opened as a converting stream."""
        self.patch(_crlf, "READ_CHUNK", 1000)
        body = b"".join(b"line %d of a long message\n" % i for i in range(20000))
        data = b"Subject: big\n\n" + body
        self.assertGreater(len(data), maildir.INLINE_READ_SIZE)
        self.successResultOf(self.provider.store_for(USER))
        self.drop("new", "1700000000.e.other.host", data)
        box = yield (yield self.reopen(run_blocking=deferToThread).store_for(USER)).get_mailbox(INBOX)
        crlf = reference(data)
        (info,) = yield box.list_messages([1])
        self.assertEqual(info.size, len(crlf))
        self.assertEqual((yield box.read_message(1)), crlf)
        f = yield box.open_message(1)
        try:
            chunks = []
            while piece := f.read(65536):
                chunks.append(piece)
            self.assertEqual([len(c) for c in chunks[:-1]], [65536] * (len(chunks) - 1))
            self.assertEqual(b"".join(chunks), crlf)
        finally:
            f.close()
        md = yield box.get_metadata([1])
        self.assertEqual(md[1], mime.parse_metadata(crlf))

    def test_sizes_remembered_across_restarts(self) -> None:
        """
        A foreign file is counted once: the index keeps both sizes, and a
        restart reads no message file (the metadata cache is parsed CRLF).
        """
        self.successResultOf(self.provider.store_for(USER))
        self.drop("new", "1700000000.f.other.host", LF)
        box = self.inbox()
        self.check_served(box, 1, CRLF)
        with open(self.index_path(), "rb") as f:
            parsed = parse_index(f.read())
        self.assertEqual((parsed.records[1].size, parsed.records[1].raw), (len(CRLF), len(LF)))
        provider = self.reopen()
        opened: list[str] = []
        real_open, real_os_open = builtins.open, os.open

        def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            opened.append(os.fspath(file) if not isinstance(file, int) else "")
            return real_open(file, *args, **kwargs)

        def counting_os_open(path: Any, *args: Any, **kwargs: Any) -> Any:
            opened.append(os.fspath(path))
            return real_os_open(path, *args, **kwargs)

        self.patch(builtins, "open", counting_open)
        self.patch(os, "open", counting_os_open)
        self.patch(mime, "parse_metadata", lambda *a: self.fail("parsed again"))
        box2 = self.inbox(provider)
        (info,) = self.successResultOf(box2.list_messages())
        self.assertEqual(info.size, len(CRLF))
        self.assertEqual(self.successResultOf(box2.get_metadata([1]))[1].header_size, len(CRLF) - 6)
        message_files = [p for p in opened if f"{os.sep}new{os.sep}" in p or f"{os.sep}cur{os.sep}" in p]
        self.assertEqual(message_files, [])
        self.patch(builtins, "open", real_open)
        self.patch(os, "open", real_os_open)
        self.assertEqual(self.successResultOf(box2.read_message(1)), CRLF)

    def test_dovecot_sizes_honoured(self) -> None:
        """A Dovecot file name's W= is the CRLF size: the file is not read to count; S= = W= is CRLF."""
        self.successResultOf(self.provider.store_for(USER))
        self.drop("cur", f"1700000000.M1P2.dovecot.host,S={len(LF)},W={len(CRLF)}:2,S", LF)
        self.drop("new", f"1700000001.M3P2.dovecot.host,S={len(CRLF)},W={len(CRLF)}", CRLF)
        self.patch(_maildir_io, "count_file", lambda *a: self.fail("counted a file with W="))
        box = self.inbox()
        self.check_served(box, 1, CRLF)
        self.check_served(box, 2, CRLF)

    def test_dovecot_size_without_w_is_counted(self) -> None:
        """S= alone is the file's size, not a promise of CRLF: the file is counted."""
        self.successResultOf(self.provider.store_for(USER))
        self.drop("new", f"1700000000.M1P2.dovecot.host,S={len(LF)}", LF)
        self.check_served(self.inbox(), 1, CRLF)

    def test_copy_and_move(self) -> None:
        """A copied or moved LF message keeps its sizes in the target (hard link, W= in its name)."""
        store = self.successResultOf(self.provider.store_for(USER))
        self.drop("new", "1700000000.g.other.host", LF)
        self.drop("new", "1700000001.h.other.host", MULTIPART_LF)
        box = self.inbox()
        self.successResultOf(store.create_mailbox("Other"))
        other = self.successResultOf(store.get_mailbox("Other"))
        self.successResultOf(box.get_metadata([1]))  # 1 has a cache record to carry along, 2 not
        pairs = self.successResultOf(box.copy([1], other)) + self.successResultOf(box.move([2], other))
        self.assertEqual([t for _, t in pairs], [1, 2])
        multipart = to_crlf(MULTIPART_LF)
        self.check_served(other, 1, CRLF)
        self.check_served(other, 2, multipart)
        # In copy order (the Q counter), not name order: M99999 sorts after M100000.
        names = sorted(self.files("new", ".Other"), key=lambda n: int(n.split("Q")[1].split(".")[0]))
        self.assertEqual([name_sizes(n)[1] for n in names], [len(CRLF), len(multipart)])
        self.assertEqual(
            os.stat(os.path.join(self.user_dir, "new", self.files("new")[0])).st_ino,
            os.stat(os.path.join(self.user_dir, ".Other", "new", names[0])).st_ino,
        )
        # After a restart, and after losing the target's index (W= in the names).
        other2 = self.successResultOf(
            self.successResultOf(self.reopen().store_for(USER)).get_mailbox("Other")
        )
        self.check_served(other2, 1, CRLF)
        os.unlink(self.index_path(".Other"))
        self.patch(_maildir_io, "count_file", lambda *a: self.fail("counted a file with W="))
        other3 = self.successResultOf(
            self.successResultOf(self.reopen().store_for(USER)).get_mailbox("Other")
        )
        self.check_served(other3, 1, CRLF)
        self.check_served(other3, 2, multipart)

    def test_appended_bytes_with_bare_lf(self) -> None:
        """APPEND of bare-LF octets stores them as given, named with W=, served with CRLF."""
        box = self.inbox()
        uid = self.successResultOf(box.append(MIXED))
        (name,) = self.files("new")
        self.assertEqual(name_sizes(name), (len(MIXED), len(MIXED_CRLF)))
        with open(os.path.join(self.user_dir, "new", name), "rb") as f:
            self.assertEqual(f.read(), MIXED)
        self.check_served(box, uid, MIXED_CRLF)

    def test_own_mail_fast_path(self) -> None:
        """
        Mail txmail writes with CRLF is not counted or converted: no W= in
        the name, no count of the file, served as the file is.
        """
        self.patch(_maildir_io, "count_file", lambda *a: self.fail("counted txmail's own file"))
        self.patch(maildir, "to_crlf", lambda *a: self.fail("converted a CRLF file"))
        self.patch(maildir, "CRLFFile", lambda *a: self.fail("converted a CRLF file"))
        box = self.inbox()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(CRLF)
        uids = [
            self.successResultOf(box.append(CRLF)),
            self.successResultOf(box.append(MessageSource.from_file(path, len(CRLF), fsynced=True))),
        ]
        for name in self.files("new"):
            self.assertEqual(name_sizes(name), (len(CRLF), None))
        store = self.successResultOf(self.provider.store_for(USER))
        self.successResultOf(store.create_mailbox("Other"))
        other = self.successResultOf(store.get_mailbox("Other"))
        self.successResultOf(box.copy(uids, other))
        for mailbox in (box, other, self.inbox(self.reopen())):
            for uid in uids:
                self.check_served(mailbox, uid, CRLF)

    def test_index_version_1_upgraded(self) -> None:
        """
        An index written before the raw size (version 1) still loads with
        the same UIDs; its files are counted once, an LF file gets its CRLF
        size and its metadata (cached parsed with LFs) parsed again, and the
        index is rewritten in the current version, so the next start reads no file.
        """
        box = self.inbox()
        self.successResultOf(box.append(CRLF, [SEEN]))
        self.drop("new", "1700000000.i.other.host", LF)
        self.successResultOf(box.refresh())
        uidvalidity = box.uidvalidity
        # Rewrite the index and the cache as the previous version had them:
        # the LF file with its file size and metadata parsed with LFs.
        (own,) = self.files("cur")
        (foreign,) = self.files("new")
        coff, clen = _maildir_io.cache_append(
            self.user_dir, foreign, mime.encode_metadata(mime.parse_metadata(LF))
        )
        write_v1_index(
            self.index_path(),
            uidvalidity,
            [
                (1, len(CRLF), 1.5, -1, 0, own.split(":")[0], frozenset({SEEN})),
                (2, len(LF), 2.5, coff, clen, foreign, frozenset()),
            ],
        )
        box2 = self.inbox(self.reopen())
        self.assertEqual(box2.uidvalidity, uidvalidity)
        self.assertEqual([i.uid for i in self.successResultOf(box2.list_messages())], [1, 2])
        self.check_served(box2, 1, CRLF)
        self.check_served(box2, 2, CRLF)
        with open(self.index_path(), "rb") as f:
            parsed = parse_index(f.read())
        self.assertEqual(parsed.version, INDEX_VERSION)
        self.assertEqual(
            [(r.size, r.raw) for r in parsed.records.values()],
            [(len(CRLF), len(CRLF)), (len(CRLF), len(LF))],
        )
        self.patch(_maildir_io, "count_file", lambda *a: self.fail("counted again"))
        box3 = self.inbox(self.reopen())
        self.check_served(box3, 2, CRLF)

    def test_deleted_index_recounts(self) -> None:
        """Without the index, files are taken in again with their CRLF sizes."""
        self.successResultOf(self.provider.store_for(USER))
        self.drop("new", "1700000000.j.other.host", MIXED)
        self.successResultOf(self.inbox().get_metadata([1]))
        os.unlink(self.index_path())
        self.check_served(self.inbox(self.reopen()), 1, MIXED_CRLF)


class MaildirLineEndThreadTests(TestCase):
    """The conversion as the server runs it: file work in real threads."""

    def test_threads(self) -> Any:
        root = self.mktemp()
        provider = maildir.MaildirProvider(root, hostname="mx.test", run_blocking=deferToThread, watch="off")
        path = os.path.join(root, "example.test", "alice", "new", "1700000000.k.other.host")

        def opened(store: Any) -> Any:
            with open(path, "wb") as f:
                f.write(LF)
            return store.get_mailbox(INBOX)

        d = provider.store_for(USER).addCallback(opened)
        d.addCallback(lambda box: box.get_metadata([1]).addCallback(lambda md: (box, md)))

        def check(result: tuple[Any, Any]) -> Any:
            box, md = result
            self.assertEqual(md[1], mime.parse_metadata(CRLF))
            return box.read_message(1)

        d.addCallback(check)
        d.addCallback(self.assertEqual, CRLF)
        return d
