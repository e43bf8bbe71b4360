"""
The foundation's user story, with the real programs: ``txmail user add`` creates
a user, ``twistd -n mailserver`` serves, smtplib sends, and the message is a
file in the user's Maildir ``new/``.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
CLI = "import sys; from txmail.cli import main; sys.exit(main())"


def plugin_env() -> dict[str, str]:
    """
    The environment for twistd.  An installed txmail has its plugin in
    site-packages' twisted/plugins; an editable (development) install does
    not, so then the checkout's twisted/plugins is put on the path.
    """
    import twisted

    env = dict(os.environ)
    installed = os.path.exists(os.path.join(os.path.dirname(twisted.__file__), "plugins", "txmail_plugin.py"))
    if not installed:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise AssertionError(f"twistd exited with {proc.returncode}: {output[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("twistd did not start listening")


class TwistdAcceptanceTests(TestCase):
    timeout = 120

    def test_user_add_then_receive(self) -> Any:
        """A user made with the admin command receives SMTP mail into Maildir new/ under twistd."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        data_dir = os.path.join(workdir, "data")

        def run() -> list[str]:
            add = subprocess.run(
                [sys.executable, "-c", CLI, "user", "add", "--data-dir", data_dir,
                 "carol@example.test", "--password-stdin"],
                input=b"s3cret\n", capture_output=True, timeout=60, cwd=workdir,
            )
            assert add.returncode == 0, add.stderr
            smtp, submission = free_port(), free_port()
            proc = subprocess.Popen(
                [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(workdir, "log"),
                 "mailserver", "--data-dir", data_dir, "--domain", "example.test",
                 "--smtp", f"tcp:{smtp}:interface=127.0.0.1",
                 "--submission", f"tcp:{submission}:interface=127.0.0.1"],
                cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=plugin_env(),
            )
            try:
                wait_for_port(smtp, proc)
                with smtplib.SMTP("127.0.0.1", smtp) as s:
                    s.sendmail("dave@remote.test", ["carol@example.test"], b"Subject: acceptance\r\n\r\nhi\r\n")
                new = os.path.join(data_dir, "mail", "example.test", "carol", "new")
                return [open(os.path.join(new, n), "rb").read().decode() for n in os.listdir(new)]
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)

        def check(messages: list[str]) -> None:
            self.assertEqual(len(messages), 1)
            self.assertIn("Subject: acceptance", messages[0])
            self.assertTrue(messages[0].startswith("Return-Path: <dave@remote.test>"))

        return deferToThread(run).addCallback(check)
