"""
Push over EventSource (:mod:`txmail.web.push`, RFC 8620 section 7.3) with
``DummyRequest`` and a ``Clock``: state events on connect and on store
changes (coalesced, only what changed, only the requested types), pings,
``closeafter=state``, clean-up, the bound on streams.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.jmap.test_web_resource import ALICE, BOB, Fixture, Request, basic
from txmail.web import api
from txmail.web.push import MAX_PING, MIN_PING, parse_push_query

ACCOUNT = api.account_id(ALICE)


def events(request: Request) -> list[tuple[str, Any]]:
    """The events written so far: (name, data)."""
    out = []
    for block in request.body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def changed(states: dict[str, str]) -> tuple[str, Any]:
    return ("state", {"@type": "StateChange", "changed": {ACCOUNT: states}})


class EventSourceTests(TestCase):
    def setUp(self) -> None:
        self.web = Fixture(self, max_event_streams=2)
        self.store = self.successResultOf(self.web.stores.store_for(ALICE))
        self.boxes = itertools.count()

    def connect(
        self, query: str = "types=*&closeafter=no&ping=0", user: str = ALICE, password: str = "alice-pw"
    ) -> Request:
        request = Request(f"/jmap/eventsource?{query}", headers={b"authorization": basic(user, password)})
        return self.web.render(request)

    def change(self, **states: str) -> None:
        """Change the test capability's states and tell the store's listeners (a new mailbox)."""
        self.web.states[ALICE].update(states)
        self.successResultOf(defer.maybeDeferred(self.store.create_mailbox, f"box{next(self.boxes)}"))

    def test_first_event_and_changes(self) -> None:
        request = self.connect()
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.header(b"content-type"), "text/event-stream; charset=utf-8")
        self.assertEqual(request.header(b"cache-control"), "no-store")
        self.assertEqual(events(request), [changed({"Thing": "1", "Other": "1"})])
        self.change(Thing="2")
        # Nothing until the reactor turn is over.
        self.assertEqual(len(events(request)), 1)
        self.web.clock.advance(0)
        self.assertEqual(events(request)[1:], [changed({"Thing": "2"})])
        # A change that leaves the states as they are sends nothing.
        self.change()
        self.web.clock.advance(0)
        self.assertEqual(len(events(request)), 2)
        self.assertEqual(request.finished, 0)

    def test_changes_of_one_turn_are_coalesced(self) -> None:
        request = self.connect()
        calls = len(self.web.calls)
        self.change(Thing="2")
        self.change(Other="5")
        self.change(Thing="3")
        self.web.clock.advance(0)
        self.assertEqual(len(self.web.calls), calls + 1)
        self.assertEqual(events(request)[1:], [changed({"Thing": "3", "Other": "5"})])

    def test_types(self) -> None:
        request = self.connect("types=Other&closeafter=no&ping=0")
        self.assertEqual(events(request), [changed({"Other": "1"})])
        self.change(Thing="2")
        self.web.clock.advance(0)
        self.assertEqual(len(events(request)), 1)
        self.change(Other="2")
        self.web.clock.advance(0)
        self.assertEqual(events(request)[1:], [changed({"Other": "2"})])

    def test_other_users_changes_are_not_seen(self) -> None:
        request = self.connect()
        bob = self.successResultOf(self.web.stores.store_for(BOB))
        self.web.states[BOB]["Thing"] = "10"
        self.successResultOf(defer.maybeDeferred(bob.create_mailbox, "bobs"))
        self.web.clock.advance(0)
        self.assertEqual(len(events(request)), 1)
        self.assertNotIn(b"10", request.body)
        self.assertEqual({c.user for c in self.web.calls}, {ALICE})

    def test_ping(self) -> None:
        request = self.connect("types=*&closeafter=no&ping=30")
        self.web.clock.advance(29)
        self.assertEqual(len(events(request)), 1)
        self.web.clock.advance(1)
        self.assertEqual(events(request)[-1], ("ping", {"interval": 30}))
        # An event puts the next ping off.
        self.web.clock.advance(20)
        self.change(Thing="2")
        self.web.clock.advance(0)
        self.web.clock.advance(29)
        self.assertEqual(events(request)[-1][0], "state")
        self.web.clock.advance(1)
        self.assertEqual(events(request)[-1], ("ping", {"interval": 30}))

    def test_ping_bounds(self) -> None:
        request = self.connect("types=*&closeafter=no&ping=1")
        self.web.clock.advance(MIN_PING)
        self.assertEqual(events(request)[-1], ("ping", {"interval": MIN_PING}))
        request = self.connect("types=*&closeafter=no&ping=0")
        self.web.clock.advance(10_000)
        self.assertEqual(len(events(request)), 1)

    def test_close_after_state(self) -> None:
        request = self.connect("types=*&closeafter=state&ping=0")
        # The current states are the baseline: nothing is sent yet.
        self.assertEqual(events(request), [])
        self.assertEqual(request.finished, 0)
        self.change(Other="7")
        self.web.clock.advance(0)
        self.assertEqual(events(request), [changed({"Other": "7"})])
        self.assertEqual(request.finished, 1)
        self.assertEqual(self.store._store_listeners, {})
        self.assertEqual(self.web.endpoint.streams.count(ALICE), 0)

    def test_connection_lost_removes_listener(self) -> None:
        request = self.connect("types=*&closeafter=no&ping=30")
        self.assertEqual(len(self.store._store_listeners), 1)
        self.assertEqual(self.web.endpoint.streams.count(ALICE), 1)
        request.processingFailed(Failure(ConnectionError("lost")))
        self.assertEqual(self.store._store_listeners, {})
        self.assertEqual(self.web.endpoint.streams.count(ALICE), 0)
        self.assertEqual(self.web.clock.getDelayedCalls(), [])

    def test_stream_bound(self) -> None:
        first = self.connect()
        self.connect()
        third = self.connect()
        self.assertEqual(third.responseCode, 429)
        # Bob has his own.
        self.assertEqual(self.connect(user=BOB, password="bob-pw").responseCode, 200)
        first.processingFailed(Failure(ConnectionError("lost")))
        self.assertEqual(self.connect().responseCode, 200)

    def test_bad_query_and_credentials(self) -> None:
        for query in (
            "types=*&closeafter=maybe",
            "ping=-1",
            "ping=x",
            "types=a b",
            "types=",
            "ping=1&ping=2",
        ):
            self.assertEqual(self.connect(query).responseCode, 400, query)
        self.assertEqual(self.web.endpoint.streams.count(ALICE), 0)
        request = self.connect(password="wrong")
        self.web.clock.advance(10)
        self.assertEqual(request.responseCode, 401)

    def test_states_failure_is_logged(self) -> None:
        async def broken(context: Any) -> dict[str, str]:
            raise RuntimeError("states broke")

        self.web.registry.capabilities["urn:example:test"].states = broken
        request = self.connect()
        self.assertEqual(events(request), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # The stream stays open, and later checks run.
        self.change(Thing="2")
        self.web.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(request.finished, 0)


class QueryTests(SynchronousTestCase):
    def test_defaults_and_values(self) -> None:
        self.assertEqual(parse_push_query({}), (None, False, 0))
        self.assertEqual(
            parse_push_query({b"types": [b"Email,Mailbox"], b"closeafter": [b"state"], b"ping": [b"60"]}),
            (frozenset({"Email", "Mailbox"}), True, 60),
        )
        self.assertEqual(parse_push_query({b"ping": [b"100000"]})[2], MAX_PING)
