"""
Push over EventSource (RFC 8620 section 7.3): one open ``text/event-stream``
response a client, fed with ``state`` events (a StateChange object, section
7.1) and ``ping`` events.

When the stream opens, and whenever the user's store tells of a change
(:meth:`txmail.interfaces.IStoreChanges.add_store_listener`), the stream
asks every capability's ``states(context)`` for the current state of its
data types and sends those that differ from what it sent last, restricted
to the ``types`` the client asked for.  The changes of one reactor turn are
coalesced into one check (a delivery that touches several mailboxes is one
event), and checks never overlap: a change during a check starts another
once it is done.

Choices where RFC 8620 leaves them open:

* With ``closeafter=no`` the first event carries the current state of
  every requested type; with ``closeafter=state`` the stream waits for a
  change, sends it and ends (a client behind a buffering proxy reconnects
  and would otherwise get an event at once, every time).
* ``ping`` is bounded to :data:`MIN_PING` .. :data:`MAX_PING` seconds
  (``0``: no pings); every ping carries the interval in force
  (``{"interval": N}``), so a client sees when its value was changed.
* Events carry no ``id``: a reconnecting client asks the API for changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from txmail.interfaces import IStoreChanges
from txmail.jmap.core import CallContext, Capability

__all__ = ["MAX_PING", "MIN_PING", "EventStream", "parse_push_query"]

MIN_PING = 5
MAX_PING = 600
_TYPE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-/")


def parse_push_query(args: dict[bytes, list[bytes]]) -> tuple[frozenset[str] | None, bool, int]:
    """
    The ``types``, ``closeafter`` and ``ping`` of an EventSource URL
    (RFC 8620 section 7.3): (the types, ``None`` for ``*``; whether to close
    after a state event; the ping interval in force, bounded).

    Raises:
        ValueError: a parameter is malformed.
    """

    def one(name: bytes, default: str) -> str:
        values = args.get(name) or [default.encode()]
        if len(values) != 1:
            raise ValueError(f"{name.decode()} is given more than once")
        try:
            return values[0].decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"{name.decode()} is not ASCII") from None

    types_text = one(b"types", "*").strip()
    types: frozenset[str] | None
    if types_text == "*":
        types = None
    else:
        names = [t.strip() for t in types_text.split(",") if t.strip()]
        if not names or any(not set(t) <= _TYPE_CHARS or len(t) > 64 for t in names) or len(names) > 64:
            raise ValueError("types must be * or a comma-separated list of type names")
        types = frozenset(names)
    close_after = one(b"closeafter", "no")
    if close_after not in ("state", "no"):
        raise ValueError('closeafter must be "state" or "no"')
    ping_text = one(b"ping", "0")
    if not ping_text.isdigit() or len(ping_text) > 9:
        raise ValueError("ping must be a number of seconds")
    ping = int(ping_text)
    if ping:
        ping = min(max(ping, MIN_PING), MAX_PING)
    return types, close_after == "state", ping


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventStream:
    """
    One client's event stream on an open twisted.web request.

    Args:
        request: the request, its response headers not yet written.
        context: the user's call context (``states`` is called with it).
        capabilities: the capabilities asked for states.
        types: the data types to report, ``None`` for all.
        close_after_state: end the response after the first state event.
        ping: seconds between pings (``0``: none).
        clock: the reactor.
        on_close: called once when the stream ends (either side).
    """

    log = Logger()

    def __init__(
        self,
        request: Any,
        *,
        context: CallContext,
        capabilities: Iterable[Capability],
        types: frozenset[str] | None,
        close_after_state: bool,
        ping: int,
        clock: IReactorTime,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.request = request
        self.context = context
        self.capabilities = [c for c in capabilities if c.states is not None]
        self.types = types
        self.close_after_state = close_after_state
        self.ping = ping
        self.clock = clock
        self.on_close = on_close
        self.closed = False
        self.sent: dict[str, str] = {}
        self._first = True
        self._remove_listener: Callable[[], None] | None = None
        self._pending: IDelayedCall | None = None
        self._ping_call: IDelayedCall | None = None
        self._checking = False
        self._again = False

    def start(self) -> None:
        """Write the headers, start listening to the store and send the first event."""
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx: pass events on at once
        request.notifyFinish().addBoth(self._finished)
        request.write(b": txmail push\n\n")
        store = self.context.store
        if IStoreChanges.providedBy(store):
            self._remove_listener = store.add_store_listener(self._changed)
        self._schedule_ping()
        self._run()

    def close(self) -> None:
        """End the stream (the response is finished)."""
        if self.closed:
            return
        self._cleanup()
        if not getattr(self.request, "_disconnected", False):
            self.request.finish()

    # -- internals --

    def _finished(self, result: Any) -> None:
        """The response ended: finished by us, or the connection was lost."""
        self._cleanup()

    def _cleanup(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        for call in (self._pending, self._ping_call):
            if call is not None and call.active():
                call.cancel()
        self._pending = self._ping_call = None
        self.on_close()

    def _changed(self, change: Any) -> None:
        """A store listener: check once this reactor turn is over."""
        if self.closed or self._pending is not None:
            return
        self._pending = self.clock.callLater(0, self._run)

    def _run(self) -> None:
        self._pending = None
        if self.closed:
            return
        if self._checking:
            self._again = True
            return
        self._checking = True
        d = defer.ensureDeferred(self._check())
        d.addErrback(lambda f: self.log.failure("JMAP push state check failed", f))
        d.addBoth(self._checked)

    def _checked(self, _: Any) -> None:
        self._checking = False
        if self._again and not self.closed:
            self._again = False
            self._run()

    async def _states(self) -> dict[str, str]:
        states: dict[str, str] = {}
        for capability in self.capabilities:
            assert capability.states is not None
            found = await capability.states(self.context)
            states.update({str(k): str(v) for k, v in found.items()})
        if self.types is not None:
            states = {k: v for k, v in states.items() if k in self.types}
        return states

    async def _check(self) -> None:
        states = await self._states()
        if self.closed:
            return
        first, self._first = self._first, False
        changed = {k: v for k, v in states.items() if self.sent.get(k) != v}
        self.sent.update(states)
        if first and self.close_after_state:
            return  # the baseline: wait for a change
        if changed:
            self._send("state", {"@type": "StateChange", "changed": {self.context.account_id: changed}})
            if self.close_after_state:
                self.close()

    def _send(self, name: str, data: Any) -> None:
        if self.closed:
            return
        self.request.write(_event(name, data))
        self._schedule_ping()

    def _schedule_ping(self) -> None:
        if not self.ping or self.closed:
            return
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.reset(self.ping)
        else:
            self._ping_call = self.clock.callLater(self.ping, self._send_ping)

    def _send_ping(self) -> None:
        self._ping_call = None
        self._send("ping", {"interval": self.ping})
