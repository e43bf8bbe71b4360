"""
Tests for txmail.policy.rspamd against a fake rspamd: a twisted.web server
on 127.0.0.1 port 0 that records each request and answers what the test
set (JSON, an HTTP error, garbage, or nothing at all).  Timeouts run on a
task.Clock; the HTTP traffic on the real reactor.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from txmail.errors import ConfigError
from txmail.imap.listeners import MessagesCopied
from txmail.model import MessageSource, SpecialUse
from txmail.policy.hooks import MessageInfo, SessionInfo, TransactionInfo, Verdict
from txmail.policy.rspamd import (
    NOT_SCANNED,
    RspamdLearner,
    RspamdPolicy,
    RspamdSettings,
    build_rspamd,
    parse_rspamd_settings,
    strip_spam_fields,
)
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

MESSAGE = (
    b"From: alice@example.org\r\n"
    b"X-Spam-Status: No, score=-100\r\n"
    b"  forged=yes\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)


class FakeRspamd(resource.Resource):
    """Records requests; answers ``self.answer`` (a dict, ``(status, bytes)``, or ``None``: never)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, dict[bytes, list[bytes]], bytes]] = []
        self.answer: Any = {"action": "no action", "score": 1.5, "required_score": 15.0}
        self.hanging: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(
            (request.path, dict(request.requestHeaders.getAllRawHeaders()), request.content.read())
        )
        answer = self.answer
        if answer is None:
            self.hanging.append(request)
            request.notifyFinish().addErrback(lambda _: None)
            return server.NOT_DONE_YET
        if isinstance(answer, tuple):
            request.setResponseCode(answer[0])
            return answer[1]
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer).encode()


def session_info(**overrides: Any) -> SessionInfo:
    values: dict[str, Any] = {
        "role": "mta",
        "session_id": "s1",
        "hostname": "mx.example.test",
        "client_address": "192.0.2.7",
        "client_name": "mail.example.org",
        "iprev": "pass",
        "helo": "mail.example.org",
        "transaction": TransactionInfo(
            mail_from="alice@example.org",
            recipients=["bob@example.test", "carol@example.test"],
            message_id="MSGID1",
        ),
    }
    values.update(overrides)
    return SessionInfo(**values)


class RspamdTestCase(TestCase):
    def setUp(self) -> None:
        self.fake = FakeRspamd()
        site = server.Site(self.fake)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.clock = task.Clock()

    def policy(self, **kwargs: Any) -> RspamdPolicy:
        kwargs.setdefault("clock", self.clock)
        policy = RspamdPolicy(kwargs.pop("url", self.url), reactor=reactor, **kwargs)
        self.addCleanup(policy.stop)
        return policy

    def message(self, data: bytes = MESSAGE, in_memory: bool = True) -> MessageInfo:
        trace = b"Return-Path: <alice@example.org>\r\nReceived: from x by y\r\n"
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(trace + data)
        whole = trace + data
        return MessageInfo(
            MessageSource.from_file(path, len(whole), data=whole if in_memory else None),
            len(data),
            len(trace),
        )

    def check(
        self, policy: RspamdPolicy, session: SessionInfo | None = None, **kw: Any
    ) -> defer.Deferred[Any]:
        return defer.maybeDeferred(policy.on_data, session or session_info(), self.message(**kw))

    def header_values(self, verdict: Verdict) -> dict[str, str]:
        out = {}
        for field in verdict.headers:
            name, _, value = field.decode().partition(": ")
            out[name] = value.rstrip("\r\n")
        return out


class RequestTests(RspamdTestCase):
    @defer.inlineCallbacks
    def test_headers_and_body(self) -> Any:
        """/checkv2 gets the client's message (no trace fields) and the session in rspamd's headers."""
        yield self.check(self.policy(), session_info(authenticated_user="alice"))
        ((path, headers, body),) = self.fake.requests
        self.assertEqual(path, b"/checkv2")
        self.assertEqual(body, MESSAGE)
        self.assertEqual(headers[b"Ip"], [b"192.0.2.7"])
        self.assertEqual(headers[b"Helo"], [b"mail.example.org"])
        self.assertEqual(headers[b"Hostname"], [b"mail.example.org"])
        self.assertEqual(headers[b"From"], [b"alice@example.org"])
        self.assertEqual(headers[b"Rcpt"], [b"bob@example.test", b"carol@example.test"])
        self.assertEqual(headers[b"Queue-Id"], [b"MSGID1"])
        self.assertEqual(headers[b"User"], [b"alice"])
        self.assertEqual(headers[b"Mta-Name"], [b"mx.example.test"])
        self.assertNotIn(b"Deliver-To", headers)
        self.assertNotIn(b"Pass", headers)

    @defer.inlineCallbacks
    def test_bounce_unknown_name_one_recipient(self) -> Any:
        """<> is sent as such; no rDNS name after a lookup is "unknown"; one recipient is Deliver-To."""
        session = session_info(
            client_name=None,
            iprev="fail",
            transaction=TransactionInfo(mail_from="", recipients=["bob@example.test"], message_id="M2"),
        )
        yield self.check(self.policy(), session)
        ((_, headers, _),) = self.fake.requests
        self.assertEqual(headers[b"From"], [b"<>"])
        self.assertEqual(headers[b"Hostname"], [b"unknown"])
        self.assertEqual(headers[b"Deliver-To"], [b"bob@example.test"])
        self.assertNotIn(b"User", headers)

    @defer.inlineCallbacks
    def test_no_lookup_no_hostname(self) -> Any:
        """When iprev was not looked up, rspamd looks the name up itself."""
        yield self.check(self.policy(), session_info(client_name=None, iprev=None))
        ((_, headers, _),) = self.fake.requests
        self.assertNotIn(b"Hostname", headers)

    @defer.inlineCallbacks
    def test_message_from_file(self) -> Any:
        """A message not held in memory is read from its file, after the trace fields."""
        yield self.check(self.policy(), in_memory=False)
        ((_, _, body),) = self.fake.requests
        self.assertEqual(body, MESSAGE)

    @defer.inlineCallbacks
    def test_too_large_not_sent(self) -> Any:
        verdict = yield self.check(self.policy(max_size=len(MESSAGE) - 1))
        self.assertIsNone(verdict)
        self.assertEqual(self.fake.requests, [])

    def test_roles(self) -> None:
        self.assertEqual(RspamdPolicy(self.url, reactor=reactor).roles, frozenset({"mta"}))
        policy = RspamdPolicy(self.url, reactor=reactor, roles=["mta", "submission"])
        self.assertEqual(policy.roles, frozenset({"mta", "submission"}))


class ActionTests(RspamdTestCase):
    @defer.inlineCallbacks
    def verdict(self, answer: Any, **kwargs: Any) -> Any:
        self.fake.answer = answer
        verdict = yield self.check(self.policy(**kwargs))
        return verdict

    @defer.inlineCallbacks
    def test_no_action(self) -> Any:
        verdict = yield self.verdict({"action": "no action", "score": 1.5, "required_score": 15})
        self.assertFalse(verdict.refused)
        self.assertIsNone(verdict.folder)
        self.assertEqual(
            self.header_values(verdict),
            {"X-Spam-Status": "No, score=1.50 required=15.00", "X-Spam-Score": "1.50"},
        )
        # The client's forged X-Spam-Status (with its continuation line) is removed.
        (edit,) = verdict.edits
        self.assertEqual(
            edit(MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n"), b"From: alice@example.org\r\nSubject: hello\r\n"
        )

    @defer.inlineCallbacks
    def test_reject_with_smtp_message(self) -> Any:
        verdict = yield self.verdict(
            {
                "action": "reject",
                "score": 15,
                "required_score": 15,
                "messages": {"smtp_message": "Gtube pattern"},
            }
        )
        self.assertEqual(str(verdict.reply.code) + " " + verdict.reply.enhanced, "554 5.7.1")
        self.assertEqual(verdict.reply.text, "Gtube pattern")

    @defer.inlineCallbacks
    def test_reject_bad_smtp_message(self) -> Any:
        """An smtp_message that is not one line of printable ASCII is not sent to the client."""
        verdict = yield self.verdict(
            {"action": "reject", "score": 20, "messages": {"smtp_message": "a\r\nb"}}
        )
        self.assertEqual((verdict.reply.code, verdict.reply.text), (554, "Spam message rejected"))

    @defer.inlineCallbacks
    def test_soft_reject(self) -> Any:
        verdict = yield self.verdict({"action": "soft reject", "score": 0})
        self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (451, "4.7.1"))

    @defer.inlineCallbacks
    def test_add_header(self) -> Any:
        verdict = yield self.verdict({"action": "add header", "score": 7.25, "required_score": 15})
        self.assertFalse(verdict.refused)
        self.assertEqual(verdict.folder, "Junk")
        self.assertEqual(
            self.header_values(verdict),
            {"X-Spam": "Yes", "X-Spam-Status": "Yes, score=7.25 required=15.00", "X-Spam-Score": "7.25"},
        )

    @defer.inlineCallbacks
    def test_rewrite_subject(self) -> Any:
        verdict = yield self.verdict(
            {"action": "rewrite subject", "score": 8, "required_score": 15, "subject": "***SPAM*** héllo"}
        )
        self.assertEqual(verdict.folder, "Junk")
        section = b"From: a@example.org\r\nSubject: hello\r\n  world\r\nTo: b@example.test\r\n"
        for edit in verdict.edits:
            section = edit(section)
        self.assertEqual(
            section,
            b"From: a@example.org\r\nSubject: =?utf-8?q?***SPAM***_h=C3=A9llo?=\r\nTo: b@example.test\r\n",
        )

    @defer.inlineCallbacks
    def test_unknown_action_delivers(self) -> Any:
        verdict = yield self.verdict({"action": "quarantine please", "score": 3})
        self.assertFalse(verdict.refused)
        self.assertIsNone(verdict.folder)

    @defer.inlineCallbacks
    def test_greylist(self) -> Any:
        """Greylisted: 451 until greylist_delay has passed, then accepted; expired entries start over."""
        self.fake.answer = {"action": "greylist", "score": 5, "required_score": 15, "message-id": "m@x"}
        policy = self.policy(greylist_delay=300, greylist_expire=3600)
        first = yield self.check(policy)
        self.assertEqual(
            (first.reply.code, first.reply.enhanced, first.reply.text), (451, "4.7.1", "Try again later")
        )
        self.clock.advance(60)
        early = yield self.check(policy)
        self.assertTrue(early.refused)
        self.clock.advance(300)
        retried = yield self.check(policy)
        self.assertFalse(retried.refused)
        self.assertEqual(self.header_values(retried)["X-Spam-Status"], "No, score=5.00 required=15.00")
        other = yield self.check(policy, session_info(client_address="192.0.2.8"))
        self.assertTrue(other.refused)
        self.clock.advance(7200)
        expired = yield self.check(policy)
        self.assertTrue(expired.refused)


class FailureTests(RspamdTestCase):
    @defer.inlineCallbacks
    def assert_failed(self, policy: RspamdPolicy, tempfail: bool) -> Any:
        verdict = yield self.check(policy)
        if tempfail:
            self.assertEqual((verdict.reply.code, verdict.reply.enhanced), (451, "4.3.0"))
        else:
            self.assertFalse(verdict.refused)
            self.assertEqual(self.header_values(verdict), {"X-Spam-Status": NOT_SCANNED})

    @defer.inlineCallbacks
    def test_unreachable(self) -> Any:
        port = self.port.getHost().port
        yield self.port.stopListening()
        for tempfail in (False, True):
            policy = self.policy(
                url=f"http://127.0.0.1:{port}", fail_action="tempfail" if tempfail else "accept"
            )
            yield self.assert_failed(policy, tempfail)

    @defer.inlineCallbacks
    def test_timeout(self) -> Any:
        """No answer within the timeout (on the injected clock): the request is abandoned."""
        self.fake.answer = None
        for tempfail in (False, True):
            policy = self.policy(timeout=15, fail_action="tempfail" if tempfail else "accept")
            d = self.check(policy)
            while not self.fake.hanging:
                yield task.deferLater(reactor, 0.01, lambda: None)
            self.assertNoResult(d)
            self.clock.advance(14)
            self.assertNoResult(d)
            self.clock.advance(1)
            verdict = yield d
            if tempfail:
                self.assertEqual(verdict.reply.code, 451)
            else:
                self.assertEqual(self.header_values(verdict), {"X-Spam-Status": NOT_SCANNED})
            self.fake.hanging.clear()

    @defer.inlineCallbacks
    def test_http_error(self) -> Any:
        self.fake.answer = (500, b"internal error")
        yield self.assert_failed(self.policy(), False)
        yield self.assert_failed(self.policy(fail_action="tempfail"), True)

    @defer.inlineCallbacks
    def test_not_json(self) -> Any:
        self.fake.answer = (200, b"<html>hello</html>")
        yield self.assert_failed(self.policy(), False)
        self.fake.answer = {"no": "action"}
        yield self.assert_failed(self.policy(fail_action="tempfail"), True)

    def test_bad_fail_action(self) -> None:
        self.assertRaises(ValueError, RspamdPolicy, self.url, reactor=reactor, fail_action="drop")


class LearnerTests(RspamdTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake.answer = {"success": True}
        self.store = self.successResultOf(MemoryProvider().store_for("bob@example.test"))
        self.successResultOf(self.store.create_mailbox("Junk", SpecialUse.JUNK))
        self.junk = self.successResultOf(self.store.get_mailbox("Junk"))
        self.inbox = self.successResultOf(self.store.get_mailbox("INBOX"))

    def event(
        self, source: str, target: str, mailbox: Any, *, source_role: Any = None, target_role: Any = None
    ) -> Any:
        uid = self.successResultOf(mailbox.append(MESSAGE, (), 1_600_000_000))
        return MessagesCopied(
            user="bob@example.test",
            source=source,
            target=target,
            source_special_use=source_role,
            target_special_use=target_role,
            moved=True,
            uids=((1, uid),),
            target_mailbox=mailbox,
        )

    def learner(self, **kwargs: Any) -> RspamdLearner:
        learner = RspamdLearner(self.url, password="pw", reactor=reactor, clock=self.clock, **kwargs)
        self.addCleanup(learner.stop)
        return learner

    @defer.inlineCallbacks
    def test_into_junk_is_spam(self) -> Any:
        learner = self.learner()
        self.assertIsNone(
            learner.messages_copied(self.event("INBOX", "Junk", self.junk, target_role=SpecialUse.JUNK))
        )
        yield learner.wait()
        ((path, headers, body),) = self.fake.requests
        self.assertEqual((path, body), (b"/learnspam", MESSAGE))
        self.assertEqual(headers[b"Password"], [b"pw"])
        self.assertEqual(headers[b"Deliver-To"], [b"bob@example.test"])

    @defer.inlineCallbacks
    def test_out_of_junk_is_ham(self) -> Any:
        learner = self.learner()
        learner.messages_copied(self.event("Junk", "Archive", self.inbox, source_role=SpecialUse.JUNK))
        yield learner.wait()
        self.assertEqual([r[0] for r in self.fake.requests], [b"/learnham"])

    def test_classify(self) -> None:
        learner = self.learner()

        def kind(source: str, target: str, source_role: Any = None, target_role: Any = None) -> Any:
            event = MessagesCopied("u", source, target, source_role, target_role, False, (), None)
            return learner.classify(event)

        self.assertEqual(kind("INBOX", "Junk"), "spam")  # by name
        self.assertEqual(kind("INBOX", "Spam", target_role=SpecialUse.JUNK), "spam")  # by role
        self.assertEqual(kind("Junk", "INBOX"), "ham")
        self.assertIsNone(kind("Junk", "Trash"))  # deleting spam is not calling it ham
        self.assertIsNone(kind("Junk", "Deleted", target_role=SpecialUse.TRASH))
        self.assertIsNone(kind("Junk", "junk"))
        self.assertIsNone(kind("INBOX", "Archive"))

    @defer.inlineCallbacks
    def test_failures_logged(self) -> Any:
        """An HTTP error is logged, not raised; "already learned" is not a failure."""
        learner = self.learner()
        self.fake.answer = (404, b'{"error":"<x@y> has been already learned as spam, ignore it"}')
        learner.messages_copied(self.event("INBOX", "Junk", self.junk))
        yield learner.wait()
        self.fake.answer = (400, b"broken")
        learner.messages_copied(self.event("INBOX", "Junk", self.junk))
        yield learner.wait()
        self.assertEqual(len(self.fake.requests), 2)  # a 4xx is not tried again

    @defer.inlineCallbacks
    def test_transient_failure_tried_again(self) -> Any:
        """A 5xx ("database is locked") is tried again after each retry delay, then given up."""
        learner = self.learner(retry_delays=(1.0, 5.0))
        self.fake.answer = (500, b'{"error":"cannot commit checkpoint: database is locked"}')
        learner.messages_copied(self.event("INBOX", "Junk", self.junk))
        # Each retry is scheduled once the failed answer is read, which may come after the
        # request reached the fake server: wait for it before moving the clock.
        clock = self.clock

        def retry_in(delay: float) -> bool:
            return any(c.getTime() == clock.seconds() + delay for c in clock.getDelayedCalls())

        yield self.until(lambda: len(self.fake.requests) == 1 and retry_in(1.0))
        self.clock.advance(1)
        yield self.until(lambda: len(self.fake.requests) == 2 and retry_in(5.0))
        self.fake.answer = {"success": True}
        self.clock.advance(5)
        yield learner.wait()
        self.assertEqual(len(self.fake.requests), 3)
        self.fake.answer = (503, b"down")
        learner.messages_copied(self.event("INBOX", "Junk", self.junk))
        yield self.until(lambda: len(self.fake.requests) == 4 and retry_in(1.0))
        self.clock.advance(1)
        yield self.until(lambda: len(self.fake.requests) == 5 and retry_in(5.0))
        self.clock.advance(5)
        yield learner.wait()  # given up after the last delay: logged, not raised
        self.assertEqual(len(self.fake.requests), 6)

    @defer.inlineCallbacks
    def until(self, condition: Any) -> Any:
        """Spin the real reactor (the fake server's HTTP) until *condition* holds."""
        for _ in range(500):
            if condition():
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("condition not reached")

    @defer.inlineCallbacks
    def test_too_large(self) -> Any:
        learner = self.learner(max_size=10)
        learner.messages_copied(self.event("INBOX", "Junk", self.junk))
        yield learner.wait()
        self.assertEqual(self.fake.requests, [])


class ConfigTests(TestCase):
    def test_defaults(self) -> None:
        settings = parse_rspamd_settings({})
        self.assertEqual(settings, RspamdSettings())
        self.assertEqual(settings.url, "http://127.0.0.1:11333")
        self.assertEqual(settings.controller_url, "http://127.0.0.1:11334")
        self.assertEqual(
            (settings.timeout, settings.fail_action, settings.listeners), (15.0, "accept", ("mta",))
        )
        self.assertEqual(
            (settings.max_size, settings.learn, settings.password), (20 * 1024 * 1024, True, None)
        )

    def test_values(self) -> None:
        settings = parse_rspamd_settings(
            {
                "url": "http://rspamd.internal:11333/",
                "controller_url": "https://rspamd.internal:8443",
                "password": "secret",
                "timeout": "30s",
                "fail_action": "tempfail",
                "listeners": ["mta", "lmtp"],
                "max_size": 1000,
                "learn": False,
            }
        )
        self.assertEqual(settings.url, "http://rspamd.internal:11333")
        self.assertEqual(settings.timeout, 30.0)
        self.assertEqual(settings.listeners, ("mta", "lmtp"))
        self.assertEqual((settings.max_size, settings.learn, settings.password), (1000, False, "secret"))

    def test_errors(self) -> None:
        for table in [
            {"urll": "http://x"},
            {"url": "ftp://x"},
            {"url": "127.0.0.1:11333"},
            {"url": 5},
            {"controller_url": "http://x:port"},
            {"url": "http://[]x"},  # a bracketed host that is not an address
            {"controller_url": "http://[127.0.0.1"},
            {"timeout": 0},
            {"timeout": "soon"},
            {"timeout": True},
            {"fail_action": "drop"},
            {"listeners": []},
            {"listeners": ["pop3"]},
            {"listeners": "mta"},
            {"max_size": -1},
            {"max_size": 0},
            {"max_size": 1.5},
            {"learn": "yes"},
            {"password": "a\nb"},
        ]:
            self.assertRaises(ConfigError, parse_rspamd_settings, table)

    def test_build(self) -> None:
        policy, learner = build_rspamd(parse_rspamd_settings({"password": "pw", "listeners": ["submission"]}))
        self.addCleanup(policy.stop)
        self.assertEqual(policy.roles, frozenset({"submission"}))
        assert learner is not None
        self.addCleanup(learner.stop)
        self.assertEqual(learner.password, "pw")
        policy2, learner2 = build_rspamd(parse_rspamd_settings({"learn": False}))
        self.addCleanup(policy2.stop)
        self.assertIsNone(learner2)

    def test_strip(self) -> None:
        section = b"X-Spam: Yes\r\nFrom: a\r\nx-spam-flag: YES\r\n\tmore\r\nX-Spam-Report: kept\r\n"
        self.assertEqual(strip_spam_fields(section), b"From: a\r\nX-Spam-Report: kept\r\n")
