"""
The server and the txmail command on a PostgreSQL queue (``[queue] backend
= "postgresql"``): mail submitted for a remote domain is queued in the
database and relayed to the remote MX (a second txmail on loopback), and
``txmail queue`` lists, shows, flushes, releases and deletes its entries.
"""

from __future__ import annotations

import contextlib
import io
import os
import smtplib
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests._dns import start_dns_server
from tests.e2e._server import maildir_files, start_server
from tests.pg._helpers import upgraded_database
from txmail import cli
from txmail.model import DeliveryState, Envelope, MessageSource, RecipientState

Gen = Generator[Any, Any, None]

PASSWORD = "correct horse"


@defer.inlineCallbacks
def wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    """Poll *predicate* (which may return a Deferred) until it is true."""
    waited = 0.0
    while not (yield defer.maybeDeferred(predicate)):
        if waited >= timeout:
            raise AssertionError("condition not met in time")
        yield task.deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


class PostgresQueueServerTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_relay_through_postgresql_queue(self) -> Gen:
        """Submitted mail for a remote domain waits in the database's queue and reaches the remote MX."""
        from txmail.pg.queue import PostgresQueue

        dsn = upgraded_database(self, start=False).dsn
        remote = yield start_server(self, hostname="mx.remote.test", domains=["remote.test"])
        remote.directory.add_user("someone@remote.test", PASSWORD)
        _, remote_port = remote.address("mta")
        dns_host, dns_port = start_dns_server(
            self,
            {("remote.test", "MX"): [(10, "mx.remote.test")], ("mx.remote.test", "A"): ["127.0.0.1"]},
        )
        sender = yield start_server(
            self,
            resolvers=[f"{dns_host}:{dns_port}"],
            relay_port=remote_port,
            outbound_enabled=True,
            queue_backend="postgresql",
            queue_lease=120,
            postgresql_dsn=dsn,
            postgresql_max_connections=4,
        )
        self.assertIsInstance(sender.queue, PostgresQueue)
        self.assertEqual((sender.runner.claim_batch, sender.runner.lease), (50, 120.0))
        self.assertFalse(os.path.exists(os.path.join(sender.settings.data_dir, "queue")))
        sender.directory.add_user("alice@example.test", PASSWORD)

        def send() -> None:
            with smtplib.SMTP(*sender.address("submission")) as s:
                s.ehlo("client.test")
                s.login("alice@example.test", PASSWORD)
                s.sendmail("alice@example.test", ["someone@remote.test"], b"Subject: via pg\r\n\r\nhello\r\n")

        yield deferToThread(send)
        yield wait_for(lambda: maildir_files(remote, "someone@remote.test") != [])
        [path] = maildir_files(remote, "someone@remote.test")
        with open(path, "rb") as f:
            self.assertTrue(f.read().endswith(b"Subject: via pg\r\n\r\nhello\r\n"))
        yield wait_for(lambda: sender.queue.list_entries().addCallback(lambda entries: entries == []))


class PostgresQueueCommandTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        from txmail.pg.queue import PostgresQueue

        self.database = upgraded_database(self, start=False)
        self.queue = PostgresQueue(self.database)
        self.data_dir = os.path.abspath(self.mktemp())
        self.config = os.path.abspath(self.mktemp())
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(
                f'[server]\ndomains = ["example.test"]\n\n[queue]\nbackend = "postgresql"\n\n'
                f'[postgresql]\ndsn = "{self.database.dsn}"\n'
            )

    def txmail(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main([*argv, "--config", self.config, "--data-dir", self.data_dir])
        return status, out.getvalue(), err.getvalue()

    def enqueue(self, rcpts: tuple[str, ...], hold: str | None = None) -> str:
        envelope = Envelope("alice@example.test", rcpts, hold=hold)
        return self.successResultOf(
            self.queue.enqueue(envelope, MessageSource.from_bytes(b"Subject: x\r\n\r\nbody\r\n"), rcpts)
        )

    def test_list_show_delete(self) -> None:
        """list and show read the database's entries; delete removes one."""
        first = self.enqueue(("bob@remote.test", "carol@remote.test"))
        second = self.enqueue(("dave@remote.test",), hold="milter: quarantine")
        status, out, err = self.txmail("queue", "list")
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[-1], "2 entries")
        self.assertTrue(lines[0].startswith(first) and lines[0].endswith("2 pending"), lines[0])
        self.assertTrue(lines[1].startswith(second) and lines[1].endswith("1 held"), lines[1])
        status, out, _ = self.txmail("queue", "show", first)
        self.assertEqual(status, 0)
        self.assertIn(f"queue id:  {first}", out)
        self.assertIn("<carol@remote.test>: pending, 0 attempt(s)", out)
        self.assertEqual(self.txmail("queue", "delete", first)[:2], (0, f"deleted {first}\n"))
        status, _, err = self.txmail("queue", "show", first)
        self.assertEqual((status, err), (1, f"txmail: error: no queue entry {first}\n"))
        self.assertEqual([e.queue_id for e in self.successResultOf(self.queue.list_entries())], [second])

    def test_flush_and_release(self) -> None:
        """flush makes deferred recipients due; release lets held ones go."""
        deferred = self.enqueue(("bob@remote.test",))
        self.successResultOf(
            self.queue.update_recipients(
                deferred, {"bob@remote.test": RecipientState(DeliveryState.DEFERRED, next_attempt=4e9)}
            )
        )
        held = self.enqueue(("dave@remote.test",), hold="milter: quarantine")
        status, out, _ = self.txmail("queue", "flush")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("1 deferred recipient(s) due now"), out)
        entry = self.successResultOf(self.queue.get_entry(deferred))
        self.assertLess(entry.recipients["bob@remote.test"].next_attempt, 4e9)
        status, out, _ = self.txmail("queue", "release", held)
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("1 held recipient(s) released"), out)
        entry = self.successResultOf(self.queue.get_entry(held))
        self.assertEqual(entry.recipients["dave@remote.test"].state, "pending")
