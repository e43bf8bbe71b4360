"""The pure formats of the migration tools (txmail.migrate._formats)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.migrate import _formats as f


class ModifiedUTF7Tests(SynchronousTestCase):
    def test_rfc3501_example(self) -> None:
        """RFC 3501 section 5.1.3's example, both ways."""
        name = "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"
        self.assertEqual(f.encode_mutf7(name), "~peter/mail/&U,BTFw-/&ZeVnLIqe-")
        self.assertEqual(f.decode_mutf7("~peter/mail/&U,BTFw-/&ZeVnLIqe-"), name)

    def test_ampersand_and_round_trip(self) -> None:
        for name in ("a&b", "Entw\u00fcrfe", "&", "x\U0001f600y", "plain"):
            self.assertEqual(f.decode_mutf7(f.encode_mutf7(name)), name)
        self.assertEqual(f.encode_mutf7("R&D"), "R&-D")

    def test_invalid(self) -> None:
        """Unterminated shifts, encoded ASCII, bad base64, raw non-ASCII, lone surrogates are not modified UTF-7."""
        for text in ("&Jjo", "&AGE-", "&Jjo!-", "caf\u00e9", "R&D", "&2D0-", "&U,BTF-"):
            self.assertIsNone(f.decode_mutf7(text), text)


class DovecotNamesTests(SynchronousTestCase):
    def test_dir_names(self) -> None:
        self.assertEqual(f.dir_name_for("Archive/2024"), ".Archive.2024")
        self.assertEqual(f.dir_name_for("v1.2 100%/\u00fc"), ".v1%2E2 100%25.&APw-")
        self.assertEqual(f.folder_for_dir_name(".v1%2E2 100%25.&APw-"), ("v1.2 100%/\u00fc", True))
        self.assertEqual(f.folder_for_dir_name(".Caf\u00e9"), ("Caf\u00e9", False))
        self.assertEqual(f.folder_for_dir_name(".a..b")[0], None)
        self.assertEqual(f.folder_for_dir_name(".inbox.x")[0], "INBOX/x")
        self.assertEqual(f.folder_for_dir_name("cur"), (None, True))
        with self.assertRaises(ValueError):
            f.dir_name_for("INBOX")

    def test_subscriptions(self) -> None:
        """Version 2 (TAB-separated components, escapes) both ways; version 1 read."""
        names = ["A/B", "Entw\u00fcrfe", "Sent"]
        data = f.format_subscriptions(names)
        self.assertEqual(data, b"V\t2\n\nA\tB\nEntw&APw-rfe\nSent\n")
        self.assertEqual(f.parse_subscriptions(data), names)
        self.assertEqual(f.parse_subscriptions(b"Sent\nA.B\n../x\n"), ["Sent", "A/B"])


class MboxFieldsTests(SynchronousTestCase):
    def test_flags_from_fields(self) -> None:
        flags = f.flags_from_headers(
            [("status", "RO"), ("x-status", "ADFT"), ("x-keywords", "a, b c"), ("x-mozilla-keys", "d")]
        )
        self.assertEqual(
            flags, {"\\Seen", "\\Answered", "\\Deleted", "\\Flagged", "\\Draft", "a", "b", "c", "d"}
        )
        self.assertEqual(f.flags_from_headers([("x-mozilla-status", "0005")]), {"\\Seen", "\\Flagged"})
        self.assertEqual(f.flags_from_headers([("status", "O")]), frozenset())

    def test_flag_fields_written(self) -> None:
        self.assertEqual(
            f.flag_headers({"\\Seen", "\\Answered", "\\Draft", "k2", "k1"}),
            b"Status: RO\nX-Status: AT\nX-Keywords: k1 k2\n",
        )
        self.assertEqual(f.flag_headers(()), b"Status: O\n")

    def test_from_line_dates(self) -> None:
        self.assertEqual(f.parse_from_line_date(b"From a@b Thu Jan  1 00:00:00 1970\n"), 0.0)
        self.assertEqual(f.parse_from_line_date(b"From a@b Thu Jan 1 01:00:00 +0100 1970"), 0.0)
        self.assertEqual(f.parse_from_line_date(b"From a@b Thu Jan 1 01:00 1970 +0100"), 0.0)
        self.assertIsNone(f.parse_from_line_date(b"From \n"))
        self.assertIsNone(f.parse_from_line_date(b"From a Thu Foo 1 01:00:00 1970"))
        self.assertEqual(f.format_from_line_date(1_600_000_000), "Sun Sep 13 12:26:40 2020")

    def test_internaldate(self) -> None:
        self.assertEqual(f.parse_internaldate("17-Jul-1996 02:44:25 -0700"), 837596665.0)
        self.assertEqual(f.parse_internaldate(" 1-Jan-1970 00:00:00 +0000"), 0.0)
        self.assertIsNone(f.parse_internaldate("yesterday"))


class IMAPDataTests(SynchronousTestCase):
    def test_fetch_response(self) -> None:
        """imaplib's pieces joined back, literals inline; FETCH items paired; brackets kept in atoms."""
        [response] = f.join_imaplib(
            [
                (b"3 (UID 9 BODY[HEADER.FIELDS (MESSAGE-ID)] {4}", b"ab\r\n"),
                b' FLAGS (\\Seen $x) INTERNALDATE "1-Jan-1970 00:00:00 +0000")',
            ]
        )
        items = f.parse_imap(response)
        fields = f.pairs(items[1])  # type: ignore[arg-type]
        self.assertEqual(fields["UID"], b"9")
        self.assertEqual(fields["BODY[HEADER.FIELDS (MESSAGE-ID)]"], b"ab\r\n")
        self.assertEqual(fields["FLAGS"], [b"\\Seen", b"$x"])

    def test_list_and_namespace(self) -> None:
        self.assertEqual(f.parse_imap(b'(\\Sent) "." "a \\"q\\""'), [[b"\\Sent"], b".", b'a "q"'])
        self.assertEqual(f.parse_imap(b'(("INBOX." ".")) NIL NIL'), [[[b"INBOX.", b"."]], None, None])
        for bad in (b"(a", b"a)", b'"open', b"{5}\r\nab"):
            with self.assertRaises(ValueError):
                f.parse_imap(bad)
