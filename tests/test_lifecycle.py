"""
Units of live change (:mod:`txmail.lifecycle`): which settings reload and
which need a restart, the reloadable TLS context, the sessions' shutdown
replies and the adapters' graceful close, the stop's deadline.  The
end-to-end stories are in ``tests/e2e/test_live_change.py``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests._certs import make_certificate
from tests.smtp.test_server import BODY, SEND, ServerTestCase
from txmail.config import Settings, load_config
from txmail.errors import ConfigError
from txmail.lifecycle import LIVE_KEYS, ReloadReport, _Stop, config_key, settings_changes
from txmail.pop3.session import POP3Session
from txmail.smtp.session import ServerSession
from txmail.tls import ReloadableServerTLS


class SettingsChangesTests(SynchronousTestCase):
    def test_live_and_restart(self) -> None:
        """Limits and policy change live; listeners, backends and threads need a restart."""
        old = Settings()
        new = dataclasses.replace(
            old,
            max_message_size=1000,
            imap_idle_timeout=1900.0,
            smtp=("tcp:25",),
            store_backend="memory",
            threads=2,
            shutdown_timeout=5.0,
        )
        live, restart = settings_changes(old, new)
        self.assertEqual(set(live), {"max_message_size", "imap_idle_timeout", "shutdown_timeout"})
        self.assertEqual(set(restart), {"smtp", "store_backend", "threads"})

    def test_tls_on_or_off_needs_a_restart(self) -> None:
        """New certificate paths reload; turning TLS on (or off) needs a restart."""
        plain = Settings()
        with_tls = dataclasses.replace(plain, tls_cert="/a/cert.pem", tls_key="/a/key.pem")
        moved = dataclasses.replace(with_tls, tls_cert="/b/cert.pem", tls_key="/b/key.pem")
        self.assertEqual(settings_changes(plain, with_tls), ([], ["tls_cert", "tls_key"]))
        self.assertEqual(settings_changes(with_tls, plain), ([], ["tls_cert", "tls_key"]))
        self.assertEqual(settings_changes(with_tls, moved), (["tls_cert", "tls_key"], []))

    def test_domains(self) -> None:
        """Another local domain is live; a new primary (first) domain needs a restart."""
        old = Settings(domains=("example.test",))
        self.assertEqual(
            settings_changes(old, Settings(domains=("example.test", "other.test"))), (["domains"], [])
        )
        self.assertEqual(
            settings_changes(old, Settings(domains=("other.test", "example.test"))), ([], ["domains"])
        )

    def test_every_live_key_is_a_setting(self) -> None:
        """LIVE_KEYS names Settings attributes only."""
        names = {f.name for f in dataclasses.fields(Settings)}
        self.assertEqual(LIVE_KEYS - names, set())

    def test_config_key(self) -> None:
        """Attributes are reported by their configuration file names."""
        self.assertEqual(config_key("smtp"), "[smtp] listen")
        self.assertEqual(config_key("threads"), "[server] threads")
        self.assertEqual(config_key("shutdown_timeout"), "[server] shutdown_timeout")
        self.assertEqual(config_key("policy"), "[policy]/[dkim]/[srs]/[arc]")
        self.assertEqual(config_key("milters"), "[[milter]]")

    def test_report_round_trip(self) -> None:
        """A report crosses from a worker as a dict and merges its errors."""
        report = ReloadReport(changed=("[smtp] max_recipients",), reloaded=("users",))
        self.assertEqual(ReloadReport.from_dict(report.to_dict()), report)
        merged = report.merged(ReloadReport(errors=("worker 1: boom",)))
        self.assertEqual(
            (merged.changed, merged.errors, merged.ok), (report.changed, ("worker 1: boom",), False)
        )


class ShutdownTimeoutConfigTests(SynchronousTestCase):
    def test_shutdown_timeout(self) -> None:
        """``[server] shutdown_timeout`` is a duration, 30 seconds by default."""
        self.assertEqual(load_config(None).shutdown_timeout, 30.0)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[server]\nshutdown_timeout = "2m"\n')
        self.assertEqual(load_config(path).shutdown_timeout, 120.0)
        with open(path, "w") as f:
            f.write("[server]\nshutdown_timeout = -1\n")
        self.assertRaises(ConfigError, load_config, path)


class ReloadableTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        _, self.cert_a, self.key_a = make_certificate(os.path.join(base, "a"))
        _, self.cert_b, self.key_b = make_certificate(os.path.join(base, "b"))
        self.cert, self.key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
        shutil.copy(self.cert_a, self.cert)
        shutil.copy(self.key_a, self.key)

    def test_load_swaps_the_context(self) -> None:
        """load() reads the files again: a new certificate gives a new context and fingerprint."""
        tls = ReloadableServerTLS(self.cert, self.key)
        before, context = tls.fingerprint, tls.getContext()
        self.assertFalse(tls.load())  # the same files: no change
        shutil.copy(self.cert_b, self.cert)
        shutil.copy(self.key_b, self.key)
        self.assertTrue(tls.load())
        self.assertNotEqual(tls.fingerprint, before)
        self.assertIsNot(tls.getContext(), context)

    def test_bad_files_keep_the_old_context(self) -> None:
        """A key that does not match, or a missing file, raises ConfigError and changes nothing."""
        tls = ReloadableServerTLS(self.cert, self.key)
        before, context = tls.fingerprint, tls.getContext()
        shutil.copy(self.key_b, self.key)
        self.assertRaises(ConfigError, tls.load)
        self.assertRaises(ConfigError, tls.load, "/nonexistent/cert.pem")
        self.assertEqual((tls.fingerprint, tls.cert_path), (before, self.cert))
        self.assertIs(tls.getContext(), context)

    def test_install_on_an_ssl_endpoint(self) -> None:
        """install() gives a parsed ssl: endpoint this context; other endpoints are left alone."""
        from twisted.internet.endpoints import serverFromString

        tls = ReloadableServerTLS(self.cert, self.key)
        endpoint = serverFromString(task.Clock(), f"ssl:0:privateKey={self.key}:certKey={self.cert}")
        self.assertTrue(tls.install(endpoint))
        self.assertIs(endpoint._sslContextFactory, tls)
        self.assertFalse(tls.install(serverFromString(task.Clock(), "tcp:0")))


class SessionShutdownTests(SynchronousTestCase):
    def test_smtp(self) -> None:
        """An SMTP session told to shut down answers 421 4.3.2 and closes (RFC 5321 section 3.8)."""
        session = ServerSession("mx.example.test")
        session.data_to_send()
        session.shutdown()
        self.assertEqual(session.data_to_send(), b"421 4.3.2 Service shutting down, closing connection\r\n")
        self.assertTrue(session.closed)
        session.shutdown()  # closed already: nothing more
        self.assertEqual(session.data_to_send(), b"")

    def test_pop3(self) -> None:
        """A POP3 session told to shut down answers -ERR and closes, without the UPDATE state."""
        session = POP3Session()
        session.data_to_send()
        session.shutdown()
        self.assertEqual(session.data_to_send(), b"-ERR Server shutting down\r\n")
        self.assertTrue(session.closed)


class SMTPGracefulTests(ServerTestCase):
    def test_idle_session(self) -> None:
        """shut_down() on an idle session writes 421 4.3.2 and closes the connection."""
        proto, transport = self.connect()
        proto.dataReceived(b"EHLO client.test\r\n")
        self.take(transport)
        self.assertEqual(proto.factory.connections, {proto})
        proto.shut_down()
        self.assertEqual(self.take(transport), [b"421 4.3.2 Service shutting down, closing connection"])
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(proto.factory.connections, set())

    def test_data_in_progress_finishes(self) -> None:
        """A session in DATA finishes the message (250), then gets 421; a transaction not yet in DATA too."""
        proto, transport = self.connect()
        proto.dataReceived(SEND)
        self.take(transport)
        proto.shut_down()
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(BODY)
        lines = self.take(transport)
        self.assertEqual(self.final_codes(lines), [b"250", b"421"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.router.delivered), 1)

    def test_mail_transaction_finishes(self) -> None:
        """Between MAIL and DATA the session is not idle: the transaction may still complete."""
        proto, transport = self.connect()
        proto.dataReceived(b"EHLO client.test\r\nMAIL FROM:<s@remote.test>\r\n")
        self.take(transport)
        proto.shut_down()
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"RCPT TO:<alice@example.test>\r\nDATA\r\n" + BODY)
        self.assertEqual(self.final_codes(self.take(transport)), [b"250", b"354", b"250", b"421"])

    def test_new_connection_while_draining(self) -> None:
        """A connection accepted while the server drains is greeted and closed at once with 421."""
        proto, _ = self.connect()
        proto.factory.draining = True
        other = proto.factory.buildProtocol(None)
        other_transport = StringTransport()
        other.makeConnection(other_transport)
        self.assertEqual(
            self.take(other_transport),
            [b"220 mx.example.test ESMTP txmail", b"421 4.3.2 Service shutting down, closing connection"],
        )


class StopDeadlineTests(SynchronousTestCase):
    def test_wait_for_deadline(self) -> None:
        """wait_for fires False at the deadline when the condition never holds, leaving no call behind."""
        clock = task.Clock()
        stop = _Stop(clock, 2.0)
        d = stop.wait_for(lambda: False, interval=0.5)
        clock.advance(1.5)
        self.assertNoResult(d)
        clock.advance(0.5)
        self.assertIs(self.successResultOf(d), False)
        clock.advance(1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_wait_for_condition(self) -> None:
        """wait_for fires True once the condition holds."""
        clock = task.Clock()
        stop = _Stop(clock, 10.0)
        state = {"done": False}
        d = stop.wait_for(lambda: state["done"], interval=0.5)
        state["done"] = True
        clock.advance(0.5)
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_force(self) -> None:
        """force() (a second Control-C) ends every wait at once, and the later ones too."""
        clock = task.Clock()
        stop = _Stop(clock, 10.0)
        d = stop.race(defer.Deferred())
        stop.force()
        self.assertIs(self.successResultOf(d), False)
        self.assertIs(self.successResultOf(stop.race(defer.Deferred())), False)
        self.assertEqual(clock.getDelayedCalls(), [])


class ReloadCommandTests(SynchronousTestCase):
    def test_signals_the_pidfile_process(self) -> None:
        """``txmail reload`` sends SIGHUP to the process named in the pidfile."""
        import subprocess
        import sys

        from txmail.cli import main

        child = subprocess.Popen(
            [sys.executable, "-c", "import signal, sys, time\n"
             "signal.signal(signal.SIGHUP, lambda *a: (print('hup', flush=True), sys.exit(0)))\n"
             "print('ready', flush=True)\ntime.sleep(60)"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        self.addCleanup(lambda: child.poll() is None and child.kill())
        assert child.stdout is not None
        self.assertEqual(child.stdout.readline(), b"ready\n")
        pidfile = self.mktemp()
        with open(pidfile, "w") as f:
            f.write(f"{child.pid}\n")
        self.assertEqual(main(["reload", "--pidfile", pidfile]), 0)
        self.assertEqual(child.stdout.readline(), b"hup\n")
        self.assertEqual(child.wait(timeout=30), 0)

    def test_no_server(self) -> None:
        """Without a pidfile, or with a stale one, the command fails with status 1."""
        from txmail.cli import main

        self.assertEqual(main(["reload", "--pidfile", self.mktemp()]), 1)
        pidfile = self.mktemp()
        with open(pidfile, "w") as f:
            f.write("not a pid\n")
        self.assertEqual(main(["reload", "--pidfile", pidfile]), 1)


class FileDirectoryReloadTests(SynchronousTestCase):
    def test_reload_now(self) -> None:
        """reload() reads the users file at once (not after recheck_interval); a broken file raises and keeps the users."""
        from txmail.directory import FileDirectory
        from txmail.errors import DirectoryError

        path = os.path.join(os.path.abspath(self.mktemp()), "users.json")
        now = [0.0]
        directory = FileDirectory(
            path, local_domains=["example.test"], recheck_interval=60.0, monotonic=lambda: now[0]
        )
        self.assertEqual(directory.list_users(), [])  # checked now; again in 60 s
        other = FileDirectory(path, local_domains=["example.test"])
        other.add_user("alice@example.test", "pw")
        self.assertEqual(directory.list_users(), [])
        directory.reload()
        self.assertEqual(directory.list_users(), ["alice@example.test"])
        with open(path, "w") as f:
            f.write("{not json")
        self.assertRaises(DirectoryError, directory.reload)
        self.assertEqual(directory.list_users(), ["alice@example.test"])
