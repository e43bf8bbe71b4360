"""
End to end on 127.0.0.1: the SMTP connection cache (``ConnectionCache``)
against txmail's own server (with STARTTLS) and against a scripted server
for the cases ours never produces (a 421 to RSET on a kept connection).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import TestCase

from tests._certs import make_certificate
from tests.e2e._server import maildir_files, start_server
from tests.smtp.test_relay import MESSAGE, ScriptedFactory, ScriptedServer, read
from txmail.smtp.relay import ConnectionCache, RelayRequest


class CountingEndpoint:
    """Wraps an endpoint and counts the TCP connections made through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.count = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.count += 1
        return self.inner.connect(factory)


class Server(ScriptedServer):
    """A scripted server connection that may be one of many, and says when it is gone."""

    factory: Scripted

    def connectionMade(self) -> None:
        self.gone: defer.Deferred[None] = defer.Deferred()
        self.factory.servers.append(self)
        self.transport.write(self.factory.greeting)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.gone.callback(None)


class Scripted(ScriptedFactory):
    """A ScriptedFactory for many connections (``servers``, in order)."""

    def __init__(self, answer: Any) -> None:
        super().__init__(answer)
        self.servers: list[Server] = []

    def buildProtocol(self, addr: Any) -> Server:  # type: ignore[override]
        return Server(self)


def answer(line: str) -> bytes:
    """A well-behaved scripted server: PIPELINING, everything accepted."""
    if line.startswith("EHLO"):
        return b"250-fake.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
    if line == "DATA":
        return b"354 go\r\n"
    if line == "QUIT":
        return b"221 2.0.0 bye\r\n"
    if line.startswith("RCPT TO:<nobody@"):
        return b"550 5.1.1 no such user\r\n"
    return b"250 2.0.0 ok\r\n"


class RealServerTests(TestCase):
    """Many messages to txmail's own server over one kept connection, with STARTTLS."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        _, cert, key = make_certificate(os.path.abspath(self.mktemp()))
        self.server = yield start_server(self, tls_cert=cert, tls_key=key)
        self.server.directory.add_user("alice@example.test", "pw")
        host, port = self.server.address("mta")
        self.endpoint = CountingEndpoint(TCP4ClientEndpoint(reactor, host, port))
        self.cache = ConnectionCache(reactor)
        self.addCleanup(self.cache.close)

    def deliver(self, **kwargs: Any) -> defer.Deferred[Any]:
        kwargs.setdefault("recipients", ["alice@example.test"])
        kwargs.setdefault("message", MESSAGE)
        return self.cache.deliver(
            RelayRequest(
                host="127.0.0.1",
                port=0,
                hostname="client.test",
                mail_from="sender@remote.test",
                timeout=30,
                endpoint=self.endpoint,
                **kwargs,
            )
        )

    @defer.inlineCallbacks
    def test_many_messages_one_connection(self) -> Any:
        """Five messages (one with a refused recipient) over one TLS connection; each lands once."""
        results = []
        for i in range(5):
            recipients = ["alice@example.test"] + (["nobody@example.test"] if i == 2 else [])
            results.append((yield self.deliver(recipients=recipients, message=MESSAGE + b"%d\r\n" % i)))
        self.assertEqual([r.delivered for r in results], [["alice@example.test"]] * 5)
        self.assertEqual(results[2].status("nobody@example.test"), "permanent")
        self.assertTrue(all(r.tls for r in results))
        self.assertEqual((self.endpoint.count, self.cache.connections, self.cache.reused), (1, 1, 4))
        landed = sorted(read(p) for p in maildir_files(self.server, "alice@example.test"))
        self.assertEqual(len(landed), 5)
        self.assertTrue(all(b"with ESMTPS" in m for m in landed))
        self.assertEqual(sorted(m[-3:] for m in landed), [b"%d\r\n" % i for i in range(5)])

    @defer.inlineCallbacks
    def test_all_recipients_refused_keeps_the_connection(self) -> Any:
        """A transaction refused at RCPT leaves the connection for the next one."""
        refused = yield self.deliver(recipients=["nobody@example.test"])
        self.assertEqual(refused.status("nobody@example.test"), "permanent")
        delivered = yield self.deliver()
        self.assertEqual(delivered.delivered, ["alice@example.test"])
        self.assertEqual(self.endpoint.count, 1)

    @defer.inlineCallbacks
    def test_close_quits_idle_connections(self) -> Any:
        """close() sends QUIT on every idle connection and fires once they are gone; later deliveries still work."""
        yield self.deliver()
        ((protocol, _),) = next(iter(self.cache._idle.values()))
        yield self.cache.close()
        self.assertTrue(protocol.session.closed)
        self.assertEqual(self.cache._idle, {})
        result = yield self.deliver()  # a closed cache delivers without keeping connections
        self.assertEqual(result.delivered, ["alice@example.test"])
        self.assertEqual(self.cache._idle, {})


class ScriptedServerTests(TestCase):
    def listen(self, factory: Scripted) -> CountingEndpoint:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return CountingEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))

    def cache(self, **kwargs: Any) -> ConnectionCache:
        cache = ConnectionCache(reactor, **kwargs)
        self.addCleanup(cache.close)
        return cache

    def deliver(self, cache: ConnectionCache, endpoint: Any, **kwargs: Any) -> defer.Deferred[Any]:
        request = RelayRequest(
            host="127.0.0.1",
            port=0,
            hostname="c.test",
            mail_from="a@b.test",
            recipients=["x@fake.test"],
            message=MESSAGE,
            tls_policy="none",
            timeout=30,
            endpoint=endpoint,
        )
        return cache.deliver(request.replace(**kwargs))

    @defer.inlineCallbacks
    def test_rset_between_transactions(self) -> Any:
        """The second transaction starts with RSET and goes out pipelined, on the same connection."""
        factory = Scripted(answer)
        endpoint = self.listen(factory)
        cache = self.cache()
        yield self.deliver(cache, endpoint)
        yield self.deliver(cache, endpoint)
        self.assertEqual(endpoint.count, 1)
        self.assertEqual(factory.lines[5], "RSET")
        self.assertEqual(
            factory.lines[:5] + factory.lines[6:],
            ["EHLO c.test"] + ["MAIL FROM:<a@b.test>", "RCPT TO:<x@fake.test>", "DATA", "<end of data>"] * 2,
        )

    @defer.inlineCallbacks
    def test_stale_connection_retried_on_a_new_one(self) -> Any:
        """A kept connection answering RSET with 421 (idle too long): the message goes over a new connection."""
        seen: list[str] = []

        def closing(line: str) -> bytes:
            seen.append(line)
            if line == "RSET" and seen.count("RSET") == 1:
                return b"421 4.4.2 idle too long\r\n"
            return answer(line)

        factory = Scripted(closing)
        endpoint = self.listen(factory)
        cache = self.cache()
        first = yield self.deliver(cache, endpoint)
        second = yield self.deliver(cache, endpoint)
        self.assertEqual((first.delivered, second.delivered), (["x@fake.test"], ["x@fake.test"]))
        self.assertEqual(endpoint.count, 2)
        self.assertEqual((cache.connections, cache.reused), (2, 0))
        self.assertEqual(len(factory.content), 2)
        self.assertIsNone(second.error)

    @defer.inlineCallbacks
    def test_idle_timeout(self) -> Any:
        """An unused connection is closed with QUIT after idle_timeout; the next delivery connects again."""
        clock = task.Clock()
        factory = Scripted(answer)
        endpoint = self.listen(factory)
        cache = self.cache(idle_timeout=5, clock=clock)
        yield self.deliver(cache, endpoint)
        ((protocol, _),) = next(iter(cache._idle.values()))
        clock.advance(4.9)
        self.assertTrue(protocol.session.idle)
        clock.advance(0.2)
        yield factory.servers[0].gone
        self.assertEqual(factory.lines[-1], "QUIT")
        self.assertEqual(cache._idle, {})
        yield self.deliver(cache, endpoint)
        self.assertEqual(endpoint.count, 2)

    @defer.inlineCallbacks
    def test_limits_and_keys(self) -> Any:
        """max_transactions closes a connection; another TLS policy or name is another connection."""
        factory = Scripted(answer)
        endpoint = self.listen(factory)
        cache = self.cache(max_transactions=2)
        for _ in range(3):
            yield self.deliver(cache, endpoint)
        self.assertEqual(endpoint.count, 2)  # 2 transactions, then a new connection
        other = yield cache.deliver(
            RelayRequest(
                host="127.0.0.1", port=0, hostname="other.test", mail_from="a@b.test",
                recipients=["x@fake.test"], message=MESSAGE, tls_policy="none", endpoint=endpoint,
            )
        )  # fmt: skip
        self.assertEqual(other.delivered, ["x@fake.test"])
        self.assertEqual(endpoint.count, 3)
        self.assertIn("EHLO other.test", factory.lines)

    @defer.inlineCallbacks
    def test_server_closing_an_idle_connection(self) -> Any:
        """A kept connection the server closes is forgotten; the next delivery connects anew."""
        factory = Scripted(answer)
        endpoint = self.listen(factory)
        cache = self.cache()
        yield self.deliver(cache, endpoint)
        ((protocol, _),) = next(iter(cache._idle.values()))
        gone = protocol.when_lost()
        factory.servers[0].transport.loseConnection()
        yield gone
        self.assertEqual(cache._idle, {})
        result = yield self.deliver(cache, endpoint)
        self.assertEqual(result.delivered, ["x@fake.test"])
        self.assertEqual(endpoint.count, 2)

    @defer.inlineCallbacks
    def test_bad_arguments_keep_the_connection(self) -> Any:
        """A caller's mistake on a kept connection raises and leaves the connection for the next delivery."""
        factory = Scripted(answer)
        endpoint = self.listen(factory)
        cache = self.cache()
        yield self.deliver(cache, endpoint)
        bad = RelayRequest(
            host="127.0.0.1", port=0, hostname="c.test", mail_from="a@b.test",
            recipients=[], message=MESSAGE, tls_policy="none", endpoint=endpoint,
        )  # fmt: skip
        self.assertRaises(ValueError, cache.deliver, bad)
        yield self.deliver(cache, endpoint)
        self.assertEqual(endpoint.count, 1)
