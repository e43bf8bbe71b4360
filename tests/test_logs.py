"""
Tests of the JSON logs (:mod:`txmail.logs`): the flat object of an event,
the queue id and client trail, secrets left out, errors with their
traceback; ``[log]`` and ``--log-format`` reaching twistd's application.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from twisted.application import service
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txmail.config import load_config
from txmail.errors import ConfigError
from txmail.logs import JSONLogObserver, json_observer_for


class ObserverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.out = io.StringIO()
        self.observer = JSONLogObserver(self.out)
        self.logger = Logger(namespace="txmail.smtp.server.SMTPServerProtocol", observer=self.observer)

    def objects(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def test_one_flat_object_per_line(self) -> None:
        """An event becomes one line: time, level, system, protocol, text and its plain fields renamed."""
        self.logger.info(
            "message {message_id} from {peer}: {code}",
            message_id="6751ABCDEF",
            peer="192.0.2.7:4321",
            code=250,
            session_id="S1",
            envelope=object(),  # not a plain value: left out
        )
        [obj] = self.objects()
        self.assertEqual(obj["level"], "info")
        self.assertEqual(obj["system"], "txmail.smtp.server.SMTPServerProtocol")
        self.assertEqual(obj["protocol"], "smtp")
        self.assertEqual(obj["text"], "message 6751ABCDEF from 192.0.2.7:4321: 250")
        self.assertEqual(obj["queue_id"], "6751ABCDEF")
        self.assertEqual(obj["client"], "192.0.2.7:4321")
        self.assertEqual(obj["session"], "S1")
        self.assertEqual(obj["code"], 250)
        self.assertNotIn("envelope", obj)
        self.assertRegex(obj["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_queue_entry_and_client_trail(self) -> None:
        """The runner's entry id becomes queue_entry; the client follows the session and the message."""
        self.logger.info("SMTP connection from {peer}", peer="198.51.100.1:25000", session_id="S2")
        self.logger.info("message {message_id} accepted", message_id="M2", session_id="S2")
        runner = Logger(namespace="txmail.delivery.runner.QueueRunner", observer=self.observer)
        runner.info("{queue_id} to <{rcpt}>: 451", queue_id="Q9", message_id="M2", rcpt="x@remote.test")
        _, second, third = self.objects()
        self.assertEqual(second["client"], "198.51.100.1:25000")
        self.assertEqual(third["client"], "198.51.100.1:25000")
        self.assertEqual(third["queue_id"], "M2")
        self.assertEqual(third["queue_entry"], "Q9")
        self.assertEqual(third["protocol"], "queue")
        self.assertEqual(third["rcpt"], "x@remote.test")

    def test_no_secrets(self) -> None:
        """Fields named like a password or a secret are never written."""
        self.logger.warn("login of {user}", user="alice", password="hunter2", smarthost_secret="s3")
        [obj] = self.objects()
        self.assertEqual(obj["level"], "warn")
        self.assertNotIn("hunter2", self.out.getvalue())
        self.assertNotIn("s3", json.dumps({k: v for k, v in obj.items() if k != "time"}))

    def test_failure_traceback(self) -> None:
        """An error's traceback is in the failure field."""
        try:
            raise ValueError("boom")
        except ValueError:
            self.logger.failure("delivering {message_id} failed", failure=Failure(), message_id="M3")
        [obj] = self.objects()
        self.assertEqual(obj["level"], "critical")
        self.assertIn("ValueError: boom", obj["failure"])
        self.assertEqual(obj["queue_id"], "M3")

    def test_extra_fields(self) -> None:
        """An observer's own fields (an SMTP worker's number) are in every object."""
        out = io.StringIO()
        Logger(namespace="txmail.smtp.server", observer=JSONLogObserver(out, fields={"worker": 2})).emit(
            LogLevel.debug, "x"
        )
        self.assertEqual(json.loads(out.getvalue())["worker"], 2)


class ConfigurationTests(SynchronousTestCase):
    def test_format_values(self) -> None:
        """[log] format is text or json; json observers write to [log] file or standard output."""
        self.assertEqual(load_config(None, {}).log_format, "text")
        with self.assertRaises(ConfigError):
            load_config(None, {"log_format": "xml"})
        self.assertIsNone(json_observer_for(load_config(None, {})))
        path = os.path.abspath(self.mktemp())
        observer = json_observer_for(load_config(None, {"log_format": "json", "log_file": path}))
        assert observer is not None
        self.addCleanup(observer.out.close)
        Logger(namespace="txmail.delivery.router", observer=observer).info("delivered")
        with open(path) as f:
            self.assertEqual(json.loads(f.read())["protocol"], "delivery")

    def test_twistd_application_logs_with_it(self) -> None:
        """The server given to twistd's application sets its ILogObserver component (twistd then logs with it)."""
        from txmail.service import build_service

        data_dir = os.path.abspath(self.mktemp())
        settings = load_config(
            None,
            {
                "data_dir": data_dir,
                "log_format": "json",
                "log_file": os.path.join(data_dir + "-log.json"),
                "outbound_enabled": False,
                "smtp": [],
                "submission": [],
            },
        )
        server = build_service(settings)
        self.addCleanup(server.log_observer.out.close)
        application = service.Application("mailserver")
        server.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), server.log_observer)

    def test_plugin_options(self) -> None:
        """--metrics and --log-format reach the settings."""
        from tests.test_plugin import _maker

        options = _maker().options()  # type: ignore[attr-defined]
        options.parseOptions(["--metrics", "tcp:0:interface=127.0.0.1", "--log-format", "json"])
        self.assertEqual(options.settings.metrics_listen, ("tcp:0:interface=127.0.0.1",))
        self.assertEqual(options.settings.log_format, "json")
