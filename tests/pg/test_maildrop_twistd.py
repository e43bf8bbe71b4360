"""
Issue 13, section 4 with the real programs: two ``twistd -n mailserver``
processes (nodes) on one PostgreSQL database.  POP3 on A holds the
maildrop against B; A is killed with SIGKILL while its session is open, so
its lock stays until its lease has run out (the lease's end is moved to
the past here instead of waiting two minutes), and then B takes it over.
"""

from __future__ import annotations

import contextlib
import os
import poplib
import signal
import subprocess
import sys
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e.test_twistd_acceptance import TWISTD, free_port, plugin_env, wait_for_port
from tests.pg._helpers import upgraded_database

USER = "alice@example.test"
PASSWORD = "killed node"


class KilledNodeTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        from txmail.pg.directory import PostgresDirectory

        self.database = upgraded_database(self, start=False)
        directory = PostgresDirectory(self.database, local_domains=["example.test"])
        self.successResultOf(directory.add_user(USER, PASSWORD))
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.config = os.path.join(self.workdir, "txmail.toml")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(
                '[server]\ndomains = ["example.test"]\n\n[store]\nbackend = "postgresql"\n\n'
                '[directory]\nbackend = "postgresql"\n\n'
                f'[postgresql]\ndsn = "{self.database.dsn}"\nmax_connections = 3\n'
            )

    def node(self, name: str) -> tuple[subprocess.Popen[bytes], int]:
        """Start a twistd node (stopped when the test ends); its POP3 port."""
        pop3 = free_port()
        argv = [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            "--logfile",
            os.path.join(self.workdir, f"{name}.log"),
        ]
        argv += ["mailserver", "--config", self.config, "--data-dir", os.path.join(self.workdir, name)]
        for option in ("--smtp", "--submission"):
            argv += [option, f"tcp:{free_port()}:interface=127.0.0.1"]
        argv += ["--pop3", f"tcp:{pop3}:interface=127.0.0.1"]
        proc = subprocess.Popen(
            argv, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=plugin_env()
        )

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()

        self.addCleanup(stop)
        wait_for_port(pop3, proc)
        return proc, pop3

    def locks(self) -> list[tuple[str]]:
        return self.database.run_sync(
            lambda conn: conn.execute("SELECT address FROM maildrop_locks").fetchall()
        )

    def test_killed_node(self) -> Any:
        """
        A's open session keeps B out (-ERR [IN-USE]), still after A was
        killed; once the dead node's lease has ended, B logs in.
        """

        def login(port: int) -> poplib.POP3:
            client = poplib.POP3("127.0.0.1", port, timeout=20)
            client.user(USER)
            try:
                client.pass_(PASSWORD)
            except poplib.error_proto:
                with contextlib.suppress(OSError):
                    client.close()
                raise
            return client

        def run() -> None:
            proc_a, port_a = self.node("a")
            _, port_b = self.node("b")
            client_a = login(port_a)
            self.assertEqual(self.locks(), [(USER,)])
            with self.assertRaises(poplib.error_proto) as refused:
                login(port_b)
            self.assertTrue(refused.exception.args[0].startswith(b"-ERR [IN-USE] "), refused.exception.args)
            os.kill(proc_a.pid, signal.SIGKILL)
            proc_a.wait(timeout=30)
            client_a.close()
            with self.assertRaises(poplib.error_proto) as refused:
                login(port_b)
            self.assertTrue(refused.exception.args[0].startswith(b"-ERR [IN-USE] "), refused.exception.args)
            self.assertEqual(self.locks(), [(USER,)])  # nobody released it
            # The two minutes of the dead node's lease pass.
            self.database.run_sync(
                lambda conn: conn.execute("UPDATE maildrop_locks SET expires = now() - interval '1 second'")
            )
            client_b = login(port_b)
            self.assertEqual(client_b.stat(), (0, 0))
            client_b.quit()

        return deferToThread(run)
