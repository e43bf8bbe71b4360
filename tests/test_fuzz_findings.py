"""
Regression tests for what ``fuzz/run.py`` found (see fuzz/README.md): each
test is named after the target that found it and fails before its fix.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.imap.fragment import LineFragment
from txmail.imap.parser import decode_mailbox_name, encode_mailbox_name, parse_command
from txmail.smtp import grammar


class AddressesTargetTests(SynchronousTestCase):
    """Target ``addresses``: the SMTP grammar raises only GrammarError."""

    def test_lone_surrogate_in_domain(self) -> None:
        """
        A str may hold a lone surrogate (from JSON's ``"\\udcf8"`` or a
        ``surrogateescape`` decode); the grammar used to fail with
        UnicodeEncodeError while measuring the label in UTF-8.
        """
        for call, text in (
            (grammar.mailbox, "a@b\udcf8c"),
            (grammar.forward_path, "<a@b\udcf8c>"),
            (grammar.mail_from_argument, "<x\udcf8@b.example>"),
            (grammar.rcpt_to_argument, "<a@b.example> NOTIFY=\ud800"),
            (grammar.helo_name, "h\udcf8.example"),
            (grammar.domain, "\udcf8.example"),
        ):
            with self.subTest(text=text):
                self.assertRaises(grammar.GrammarError, call, text)

    def test_non_ascii_domain_still_accepted(self) -> None:
        """RFC 6531 U-labels are characters above U+007F, and still parse."""
        self.assertEqual(grammar.mailbox("a@bé.example").domain, "bé.example")


class MUTF7TargetTests(SynchronousTestCase):
    """Target ``mutf7``: modified UTF-7 decoding is strict both ways."""

    def test_controls_without_shift_refused(self) -> None:
        """
        RFC 3501 section 5.1.3: only 0x20-0x7E represent themselves.  A name
        without ``&`` used to be accepted with raw controls (``"a\\x7fb"``,
        ``"\\x1a"``) while the same octets next to a shift were refused, so
        ``decode`` accepted names ``encode`` never writes.
        """
        for name in ("a\x7fb c", "\x1a", "\x07peu", "a \x1b", "x\r\ny", "a\x00"):
            with self.subTest(name=name):
                self.assertRaises(ValueError, decode_mailbox_name, name)
                self.assertRaises(ValueError, decode_mailbox_name, name + "&AOk-")

    def test_controls_encoded_and_decoded(self) -> None:
        """A control in a name goes on the wire base64-encoded, and comes back."""
        self.assertEqual(encode_mailbox_name("\x1a"), "&ABo-")
        self.assertEqual(decode_mailbox_name("&ABo-"), "\x1a")
        self.assertEqual(decode_mailbox_name("Sent Items & Co"[:10]), "Sent Items")

    def test_raw_control_in_quoted_name_is_invalid(self) -> None:
        """The parser marks such a name invalid (the command is answered NO)."""
        command = parse_command([LineFragment(b'a SELECT "x\x7fy"')])
        self.assertTrue(command.invalid_name)


class ManageSieveTargetTests(SynchronousTestCase):
    """Target ``managesieve``: the session's output does not depend on how input is cut."""

    def answers(self, pieces: list[bytes]) -> bytes:
        from txmail.managesieve.session import ManageSieveSession

        session = ManageSieveSession()
        session.data_to_send()  # the greeting
        out = b""
        for piece in pieces:
            session.receive_data(piece)
            while (event := session.next_event()) is not None:
                if event.needs_decision:
                    session.accept(None)
            out += session.data_to_send()
        return out

    def test_brace_without_marker_before_crlf(self) -> None:
        """
        ``{`` followed by the line's CRLF within a marker's 16 octets is not
        a literal marker: the line is answered when its CRLF arrives.  The
        parser used to wait for 16 octets to look for the ``}``, and then
        for another CRLF, so a client that sent ``NOOP {`` and a CRLF got
        no answer.
        """
        self.assertEqual(self.answers([b"NOOP {\r\n"]), b'NO "Bad literal"\r\n')
        whole = self.answers([b'\nif true {\r\n\r\nPUTSCRIPT "s" {11+}\r'])
        self.assertEqual(whole, b'NO "Bare LF in a command"\r\nNO "Bad literal"\r\nNO "Empty command"\r\n')
        split = self.answers([b"\nif ", b"true ", b"{\r\n\r\nP", b"U", b'TSCRIPT "s" {11+}\r'])
        self.assertEqual(split, whole)

    def test_marker_cut_before_its_brace_still_waits(self) -> None:
        """A marker cut in two (no CRLF yet) is still read whole."""
        out = self.answers([b"NOOP {5", b"+}\r\nhello\r\n"])
        self.assertEqual(out, b'OK (TAG "hello") "Done"\r\n')

    def test_bare_lf_after_a_partial_line(self) -> None:
        """
        A bare LF is refused as soon as it arrives, whether the start of
        its line came in an earlier packet or not (the session used to
        parse again only once a CRLF arrived).
        """
        whole = self.answers([b"NOOP \n"])
        self.assertEqual(whole, b'NO "Bare LF in a command"\r\n')
        self.assertEqual(self.answers([b"NO", b"OP \n"]), whole)
