"""
``twistd -n mailserver --workers 2`` with ``[metrics]`` and JSON logs
(``[log] format = "json"``): the owner's ``/metrics`` adds the workers'
counts (SMTP sessions run in the workers) to its own, and the workers'
log lines arrive in the owner's JSON log file as JSON objects with a
``worker`` field and the message's queue id.
"""

from __future__ import annotations

import json
import os
import smtplib
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e.test_twistd_acceptance import free_port
from tests.e2e.test_workers import USER, Node, message, wait_until


class JSONNode(Node):
    """A :class:`Node` whose log is JSON lines in ``log.json`` (the ``--logfile`` stays empty)."""

    def __init__(self, workdir: str) -> None:
        self.metrics_port = free_port()
        self.json_log = os.path.join(workdir, "log.json")
        config = os.path.join(workdir, "txmail.toml")
        os.makedirs(workdir, exist_ok=True)
        with open(config, "w") as f:
            f.write(
                f'[metrics]\nlisten = ["tcp:{self.metrics_port}:interface=127.0.0.1"]\n'
                f'[log]\nformat = "json"\nfile = "{self.json_log}"\n'
            )
        super().__init__(workdir, ("--config", config))

    def lines(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.json_log):
            return []
        with open(self.json_log, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def log_text(self) -> str:
        return "\n".join(f"worker {line.get('worker')}: {line['text']}" for line in self.lines())

    def listening_workers(self) -> set[str]:
        return {
            str(line["worker"])
            for line in self.lines()
            if "worker" in line and "mta listening on" in line["text"]
        }

    def worker_pids(self) -> dict[str, int]:
        found = {}
        for line in self.lines():
            if "started (pid" in line["text"] and "pid" in line:
                found[str(line["worker"])] = int(line["pid"])
        return found

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=20) as r:
            text = r.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


class WorkersObservabilityTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.node = JSONNode(os.path.abspath(self.mktemp()))
        os.makedirs(self.node.workdir, exist_ok=True)
        self.node.add_user()
        self.node.start()
        self.addCleanup(self.node.stop)

    def test_workers_counted_and_logged(self) -> Any:
        """Messages received by the workers show in the owner's /metrics and in its JSON log with their queue id."""
        count = 12

        def send() -> list[str]:
            ids = []
            for n in range(count):  # one connection each: the kernel spreads them over the workers
                with smtplib.SMTP("127.0.0.1", self.node.smtp, timeout=30) as s:
                    code, reply = s.ehlo("client.test")
                    s.mail("bob@remote.test")
                    s.rcpt(USER)
                    code, reply = s.data(message(f"m{n}@test"))
                    assert code == 250, reply
                    ids.append(reply.decode().rsplit(" ", 1)[1])
            return ids

        d = deferToThread(send)

        def check(ids: list[str]) -> None:
            samples = self.node.scrape()
            self.assertEqual(
                samples[("txmail_messages_received_total", (("protocol", "smtp"), ("role", "mta")))], count
            )
            self.assertEqual(
                samples[("txmail_connections_total", (("protocol", "smtp"), ("role", "mta")))], count
            )
            self.assertEqual(samples[("txmail_messages_delivered_total", (("destination", "local"),))], count)
            rcpt = ("txmail_command_duration_seconds_count", (("command", "RCPT"), ("protocol", "smtp")))
            self.assertEqual(samples[rcpt], count)
            # The JSON log: each message's queue id on a worker's line and on the owner's delivery line.
            wait_until(
                lambda: all(any(line.get("queue_id") == i for line in self.node.lines()) for i in ids),
                20,
                "log",
            )
            lines = self.node.lines()
            for queue_id in ids:
                mine = [line for line in lines if line.get("queue_id") == queue_id]
                self.assertTrue(
                    any("worker" in line and line.get("protocol") == "smtp" for line in mine), mine
                )
                self.assertTrue(
                    any("delivered" in line["text"] and "worker" not in line for line in mine), mine
                )
            served = {line["worker"] for line in lines if "worker" in line and line.get("protocol") == "smtp"}
            self.assertTrue(served and served <= {1, 2}, served)

        return d.addCallback(check)
