"""addheader and deleteheader (RFC 5293)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import FileInto, Keep, Redirect, SieveError, parse, rebuild_message

from ._support import sieve

_MAIL = (
    b"Received: from x\r\n"
    b"X-Spam: yes\r\n"
    b"Subject: hello\r\n"
    b"X-Spam: maybe\r\n"
    b"Comment: one\r\n"
    b"Comment: two\r\n"
    b"Comment: three\r\n"
    b"\r\nbody\r\n"
)


def _names(fields: tuple[tuple[str, str], ...] | None) -> list[str]:
    assert fields is not None
    return [f"{n}: {v}" for n, v in fields]


class AddHeaderTests(SynchronousTestCase):
    def test_first_and_last(self) -> None:
        """Section 5's example: addheader at the top, or with :last at the bottom."""
        script = (
            'require ["editheader"];\n'
            'addheader "X-Source" "mail.example.com";\n'
            'addheader :last "X-Hmm" "bottom";'
        )
        result = sieve(script, _MAIL)
        names = _names(result.headers)
        self.assertEqual(names[0], "X-Source: mail.example.com")
        self.assertEqual(names[-1], "X-Hmm: bottom")
        self.assertEqual(result.deliveries, (Keep((), result.headers),))

    def test_tests_see_the_edit(self) -> None:
        """Section 4: later tests see the changed header section."""
        script = 'require ["editheader", "fileinto"]; addheader "X-Tag" "t1"; if header :is "x-tag" "t1" { fileinto "t"; }'
        result = sieve(script, _MAIL)
        self.assertEqual(result.actions[0].mailbox, "t")  # type: ignore[union-attr]

    def test_actions_carry_the_header_when_taken(self) -> None:
        script = 'require ["editheader", "copy"]; redirect :copy "a@b.org"; addheader "X-After" "1"; keep;'
        result = sieve(script, _MAIL)
        redirect, keep = result.actions
        assert isinstance(redirect, Redirect) and isinstance(keep, Keep)
        self.assertIsNone(redirect.headers)
        self.assertEqual(_names(keep.headers)[0], "X-After: 1")

    def test_non_ascii_value_is_encoded(self) -> None:
        """Section 4: a non-ASCII value is stored as RFC 2047 encoded-words, and reads back decoded."""
        script = 'require ["editheader", "fileinto"]; addheader "X-Note" "café"; if header :is "x-note" "café" { fileinto "ok"; }'
        result = sieve(script, _MAIL)
        assert result.headers is not None
        name, value = result.headers[0]
        self.assertEqual(name, "X-Note")
        self.assertTrue(value.isascii() and value.startswith("=?utf-8?"), value)
        self.assertEqual(result.actions, (FileInto("ok", headers=result.headers),))

    def test_protected_fields(self) -> None:
        """Received and Auto-Submitted are neither added nor deleted (as Pigeonhole)."""
        result = sieve(
            'require "editheader"; deleteheader "received"; addheader "Auto-Submitted" "no";', _MAIL
        )
        self.assertIsNone(result.headers)
        self.assertEqual(len(result.log), 2)

    def test_bad_name(self) -> None:
        e = self.assertRaises(SieveError, parse, 'require "editheader"; addheader "X Bad:" "v";')
        self.assertIn("invalid header field name", e.message)


class DeleteHeaderTests(SynchronousTestCase):
    def test_all_occurrences(self) -> None:
        result = sieve('require "editheader"; deleteheader "x-spam";', _MAIL)
        self.assertEqual([n for n, _ in result.headers or ()].count("X-Spam"), 0)

    def test_value_patterns(self) -> None:
        result = sieve('require "editheader"; deleteheader :matches "comment" ["t*"];', _MAIL)
        self.assertEqual([v for n, v in result.headers or () if n == "Comment"], ["one"])

    def test_index(self) -> None:
        """Section 6: :index counts occurrences of the name, from the end with :last."""
        result = sieve('require "editheader"; deleteheader :index 2 "comment";', _MAIL)
        self.assertEqual([v for n, v in result.headers or () if n == "Comment"], ["one", "three"])
        result = sieve('require "editheader"; deleteheader :index 1 :last "comment";', _MAIL)
        self.assertEqual([v for n, v in result.headers or () if n == "Comment"], ["one", "two"])

    def test_rebuild_message(self) -> None:
        script = 'require ["editheader", "fileinto"]; deleteheader "x-spam"; fileinto "clean";'
        result = sieve(script, _MAIL)
        action = result.actions[0]
        assert isinstance(action, FileInto)
        rebuilt = rebuild_message(_MAIL, action.headers)
        self.assertNotIn(b"X-Spam", rebuilt)
        self.assertTrue(rebuilt.startswith(b"Received: from x\r\nSubject: hello\r\n"))
        self.assertTrue(rebuilt.endswith(b"\r\n\r\nbody\r\n"))
        self.assertEqual(rebuild_message(_MAIL, None), _MAIL)

    def test_last_needs_index(self) -> None:
        self.assertRaises(SieveError, parse, 'require "editheader"; deleteheader :last "a";')
