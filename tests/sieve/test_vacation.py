"""Vacation (RFC 5230), vacation-seconds (RFC 6131) and the RFC 3834 rules for automatic replies."""

from __future__ import annotations

import email
import email.policy

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import Context, Keep, SieveError, Vacation, parse

from ._support import FakeVacation, sieve

_MAIL = (
    b"From: Coyote <coyote@desert.example.org>\r\n"
    b"To: Road Runner <roadrunner@acme.example.com>\r\n"
    b"Subject: Birdseed\r\n"
    b"Message-ID: <1@desert.example.org>\r\n"
    b"References: <0@desert.example.org>\r\n"
    b"\r\nhello\r\n"
)
_SCRIPT = (
    'require "vacation";\n'
    'vacation :days 7 :addresses ["roadrunner@acme.example.com"]\n'
    "  \"I'm away until October 19.  If it's an emergency, call 911.\";"
)


def _vacation(script: str = _SCRIPT, data: bytes = _MAIL, **options: object) -> Vacation | None:
    result = sieve(script, data, **options)  # type: ignore[arg-type]
    assert not result.errors, result.errors
    found = [a for a in result.actions if isinstance(a, Vacation)]
    return found[0] if found else None


class ReplyTests(SynchronousTestCase):
    def test_rfc_example(self) -> None:
        """RFC 5230 section 4's example: a reply to the sender, and the message is still kept."""
        result = sieve(_SCRIPT, _MAIL)
        self.assertTrue(result.implicit_keep)
        self.assertEqual(result.deliveries[-1], Keep())
        action = result.actions[0]
        assert isinstance(action, Vacation)
        self.assertEqual(action.to, "coyote@desert.example.org")
        self.assertEqual(action.seconds, 7 * 86400)
        self.assertEqual(action.subject, "Auto: Birdseed")
        reply = email.message_from_bytes(action.reply, policy=email.policy.default)
        self.assertEqual(reply["Auto-Submitted"], "auto-replied")
        self.assertEqual(reply["To"], "coyote@desert.example.org")
        self.assertEqual(reply["From"], "roadrunner@acme.example.com")
        self.assertEqual(reply["In-Reply-To"], "<1@desert.example.org>")
        self.assertEqual(reply["References"], "<0@desert.example.org> <1@desert.example.org>")
        self.assertIn("call 911", reply.get_content())
        self.assertIn(b"\r\n\r\nI'm away", action.reply)

    def test_subject_and_from(self) -> None:
        script = (
            'require "vacation";\n'
            'vacation :subject "Gone fishin\'" :from "Road Runner <rr@acme.example.com>" "Back soon";'
        )
        action = _vacation(script)
        assert action is not None
        reply = email.message_from_bytes(action.reply, policy=email.policy.default)
        self.assertEqual(reply["Subject"], "Gone fishin'")
        self.assertEqual(reply["From"], "Road Runner <rr@acme.example.com>")

    def test_non_ascii(self) -> None:
        """A non-ASCII reason is quoted-printable UTF-8; a non-ASCII name is encoded, its address not."""
        script = 'require "vacation"; vacation :from "Rüdiger <rr@acme.example.com>" :subject "Départ" "Je suis parti, désolé.";'
        action = _vacation(script)
        assert action is not None
        self.assertTrue(action.reply.isascii())
        reply = email.message_from_bytes(action.reply, policy=email.policy.default)
        self.assertEqual(reply["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(reply.get_content().strip(), "Je suis parti, désolé.")
        self.assertEqual(reply["Subject"], "Départ")
        self.assertEqual(reply["From"].addresses[0].addr_spec, "rr@acme.example.com")
        self.assertEqual(reply["From"].addresses[0].display_name, "Rüdiger")

    def test_mime_reason(self) -> None:
        """Section 5.3's :mime example: the reason is a MIME entity."""
        script = (
            'require "vacation";\nvacation :mime text:\nContent-Type: text/plain; charset=us-ascii\n\n'
            "Away.\n.\n;"
        )
        action = _vacation(script)
        assert action is not None
        reply = email.message_from_bytes(action.reply, policy=email.policy.default)
        self.assertEqual(reply.get_content_type(), "text/plain")
        self.assertEqual(reply.get_content().strip(), "Away.")

    def test_handle(self) -> None:
        """Section 4.2: an explicit :handle, or one made from the arguments."""
        action = _vacation('require "vacation"; vacation :handle "trip" "x";')
        assert action is not None
        self.assertEqual(action.handle, "trip")
        a = _vacation('require "vacation"; vacation "x";')
        b = _vacation('require "vacation"; vacation "y";')
        assert a is not None and b is not None
        self.assertNotEqual(a.handle, b.handle)

    def test_days_minimum_is_one(self) -> None:
        action = _vacation('require "vacation"; vacation :days 0 "x";')
        assert action is not None
        self.assertEqual(action.seconds, 86400)

    def test_seconds(self) -> None:
        """RFC 6131: :seconds, 0 meaning always reply."""
        action = _vacation('require "vacation-seconds"; vacation :seconds 1800 "x";')
        assert action is not None
        self.assertEqual(action.seconds, 1800)
        self.assertRaises(SieveError, parse, 'require "vacation"; vacation :seconds 1800 "x";')
        self.assertRaises(SieveError, parse, 'require "vacation-seconds"; vacation :days 1 :seconds 5 "x";')

    def test_bad_from(self) -> None:
        """An invalid :from is refused at parse time, or at run time when made of variables."""
        e = self.assertRaises(SieveError, parse, 'require "vacation"; vacation :from "nobody" "x";')
        self.assertIn(":from", e.message)
        result = sieve(
            'require ["vacation", "variables"]; set "f" "nobody"; vacation :from "${f}" "x";', _MAIL
        )
        self.assertEqual(result.actions, ())
        self.assertIn(":from is not a valid address", result.errors[0])

    def test_two_vacations_is_error(self) -> None:
        result = sieve('require "vacation"; vacation "a"; vacation "b";', _MAIL)
        self.assertIn("only one vacation", result.errors[0])


class NoReplyTests(SynchronousTestCase):
    """The cases where no reply may go (RFC 5230 sections 4.5 and 4.6, RFC 3834 section 2)."""

    def assertNoReply(self, data: bytes = _MAIL, why: str = "", **options: object) -> None:
        result = sieve(_SCRIPT, data, **options)  # type: ignore[arg-type]
        self.assertEqual([a for a in result.actions if isinstance(a, Vacation)], [])
        self.assertTrue(result.implicit_keep)
        self.assertTrue(any(why in line for line in result.log), result.log)

    def test_null_sender(self) -> None:
        self.assertNoReply(mail_from="", why="null")

    def test_system_senders(self) -> None:
        for sender in ("MAILER-DAEMON@example.org", "owner-list@example.org", "list-request@example.org"):
            self.assertNoReply(mail_from=sender, why="system or list")

    def test_auto_submitted(self) -> None:
        self.assertNoReply(b"Auto-Submitted: auto-generated\r\n" + _MAIL, why="Auto-Submitted")
        result = sieve(_SCRIPT, b"Auto-Submitted: no\r\n" + _MAIL)
        self.assertEqual(len(result.actions), 1)

    def test_lists(self) -> None:
        self.assertNoReply(b"List-Id: <users.example.org>\r\n" + _MAIL, why="list")
        for precedence in (b"bulk", b"list", b"junk"):
            self.assertNoReply(b"Precedence: " + precedence + b"\r\n" + _MAIL, why="Precedence")

    def test_not_addressed_to_user(self) -> None:
        data = _MAIL.replace(b"To: Road Runner <roadrunner@acme.example.com>", b"To: all@acme.example.com")
        self.assertNoReply(data, why="none of the user's addresses")

    def test_context_addresses_count(self) -> None:
        data = _MAIL.replace(b"roadrunner@acme.example.com", b"rr@other.example")
        result = sieve(_SCRIPT, data, context=Context(addresses=("RR@other.example",)))
        self.assertEqual(len(result.actions), 1)

    def test_from_the_user(self) -> None:
        self.assertNoReply(mail_from="roadrunner@acme.example.com", why="the user")

    def test_already_replied(self) -> None:
        """Section 4.1: once per sender and handle within the period."""
        tracker = FakeVacation()
        first = sieve(_SCRIPT, _MAIL, context=Context(vacation=tracker))
        action = first.actions[0]
        assert isinstance(action, Vacation)
        self.assertEqual(tracker.asked, [("coyote@desert.example.org", action.handle, 7 * 86400)])
        tracker.replied.add((action.to, action.handle))
        self.assertNoReply(why="already answered", context=Context(vacation=tracker))
