"""A scriptable fake milter on a loopback port, for the client tests."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from txmail.milter import protocol as p

__all__ = ["FakeMilter", "packet", "start_fake_milter"]


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + command + data


CONTINUE = packet(b"c")

#: A script entry: reply packets, ``None`` (never answer), or a function of
#: the command's data giving either.
Script = dict[bytes, Any]


class _Connection(Protocol):
    def __init__(self, server: FakeMilter) -> None:
        self.server = server
        self.buffer = b""
        self.commands: list[tuple[bytes, bytes]] = []

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 5:
            (length,) = struct.unpack_from("!I", self.buffer)
            if len(self.buffer) < 4 + length:
                break
            command, body = self.buffer[4:5], self.buffer[5 : 4 + length]
            self.buffer = self.buffer[4 + length :]
            self.commands.append((command, body))
            self.server.seen(command, body)
            reply = self.server.reply_to(command, body)
            if reply:
                self.transport.write(reply)

    def connectionLost(self, reason: Any = None) -> None:
        self.server.lost(self)


class FakeMilter:
    """
    Answers OPTNEG with *version*, *actions*, *protocol* (and *symlists*),
    nothing to MACRO, ABORT and QUIT, CONTINUE to anything else unless
    *script* says otherwise.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        version: int = 6,
        actions: int = p.ACTIONS_OFFERED,
        protocol: int = 0,
        symlists: bytes = b"",
    ) -> None:
        self.script = dict(script or {})
        self.optneg = packet(b"O", struct.pack("!III", version, actions, protocol) + symlists)
        self.connections: list[_Connection] = []
        self.commands: list[tuple[bytes, bytes]] = []
        self._waiting: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []
        self.closed = 0
        self.port: Any = None

    def reply_to(self, command: bytes, data: bytes) -> bytes | None:
        if command in self.script:
            reply = self.script[command]
            if callable(reply):
                reply = reply(data)
            return reply  # type: ignore[no-any-return]
        if command == b"O":
            return self.optneg
        if command in (b"D", b"A", b"Q"):
            return None
        return CONTINUE

    def seen(self, command: bytes, data: bytes) -> None:
        self.commands.append((command, data))
        self._check()

    def lost(self, conn: _Connection) -> None:
        self.closed += 1
        self._check()

    def _check(self) -> None:
        for entry in list(self._waiting):
            if entry[0]():
                self._waiting.remove(entry)
                entry[1].callback(None)

    def wait_for(self, condition: Callable[[], bool]) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if condition():
            d.callback(None)
        else:
            self._waiting.append((condition, d))
        return d

    def wait_for_command(self, command: bytes) -> defer.Deferred[None]:
        return self.wait_for(lambda: any(c == command for c, _ in self.commands))

    def names(self) -> list[bytes]:
        """The command octets received, macros left out."""
        return [c for c, _ in self.commands if c != b"D"]

    def macros(self) -> dict[bytes, dict[bytes, bytes]]:
        """Macros received, by the command they precede."""
        out: dict[bytes, dict[bytes, bytes]] = {}
        for command, data in self.commands:
            if command == b"D":
                parts = data[1:].split(b"\x00")[:-1]
                out.setdefault(data[:1], {}).update(zip(parts[::2], parts[1::2], strict=True))
        return out

    @property
    def address(self) -> str:
        return f"inet:127.0.0.1:{self.port.getHost().port}"


def start_fake_milter(test: TestCase, milter: FakeMilter) -> FakeMilter:
    """Listen on 127.0.0.1 port 0; stop listening and drop connections when *test* ends."""
    factory = Factory.forProtocol(lambda: _Connection(milter))
    milter.port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    def stop() -> defer.Deferred[Any]:
        for conn in milter.connections:
            if conn.transport is not None:
                conn.transport.abortConnection()
        return defer.maybeDeferred(milter.port.stopListening)

    test.addCleanup(stop)
    return milter
