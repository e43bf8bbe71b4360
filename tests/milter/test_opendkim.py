"""
A real OpenDKIM (Debian's ``opendkim`` package) as a milter behind txmail's
submission port: an authenticated submission arrives signed by OpenDKIM,
and the signature verifies with txmail's own DKIM verifier and the public
key the test generated.

OpenDKIM signs only for clients it trusts: those in ``InternalHosts`` or
those that authenticated (it looks for the ``{auth_authen}`` macro).  The
test's ``InternalHosts`` holds a TEST-NET address only, so 127.0.0.1 is not
trusted: the signature comes from the macro.  An unauthenticated message
on the MTA port is not signed.

OpenDKIM runs in the foreground in a temporary directory, on a free
loopback port, without syslog; ``RequireSafeKeys false`` because the
temporary directory's parents may be writable by others.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e._server import maildir_files, start_server
from tests.e2e.test_outbound import wait_for
from txmail.dnsdata import Answer
from txmail.policy import dkim

OPENDKIM = "/usr/sbin/opendkim"
PASSWORD = "correct horse"
KEY, RECORD = dkim.generate_key("rsa-sha256", 2048)

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: signed by OpenDKIM\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <opendkim-1@example.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b"\r\n"
    b"A second paragraph, with a line long enough to make the body more than a few octets long.\r\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def start_opendkim(test: TestCase) -> int:
    """Start OpenDKIM for example.test (selector ``sel``); its port.  Stopped when *test* ends."""
    if not os.path.exists(OPENDKIM):
        raise SkipTest(f"{OPENDKIM} is not installed (Debian package opendkim)")
    directory = os.path.abspath(test.mktemp())
    os.makedirs(directory)
    key = os.path.join(directory, "sel.key")
    dkim.write_key(key, KEY)
    internal = os.path.join(directory, "internal-hosts")
    with open(internal, "w") as f:
        f.write("192.0.2.1\n")  # TEST-NET-1: 127.0.0.1 is not internal, so only AUTH makes it sign
    port = free_port()
    conf = os.path.join(directory, "opendkim.conf")
    with open(conf, "w") as f:
        f.write(
            "Syslog no\n"
            "Background no\n"
            "Mode sv\n"
            f"Socket inet:{port}@127.0.0.1\n"
            f"PidFile {directory}/opendkim.pid\n"
            "Domain example.test\n"
            "Selector sel\n"
            f"KeyFile {key}\n"
            f"InternalHosts refile:{internal}\n"
            "RequireSafeKeys false\n"
        )
    log = open(os.path.join(directory, "opendkim.log"), "wb")  # noqa: SIM115 (closed at cleanup)
    process = subprocess.Popen(
        [OPENDKIM, "-f", "-x", conf], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )

    def stop() -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()

    test.addCleanup(stop)
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            log.flush()
            raise AssertionError(f"opendkim exited ({process.returncode}): {read(log.name)!r}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError("opendkim did not listen within 15 s") from None
            time.sleep(0.05)


class OpenDKIMTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        port = start_opendkim(self)
        self.server = yield start_server(
            self,
            config=(  # the [[milter]] table of a configuration file
                f'[[milter]]\naddress = "inet:127.0.0.1:{port}"\n'
                'name = "opendkim"\nlisteners = ["mta", "submission"]\n'
            ),
            threads=2,
        )
        self.server.directory.add_user("alice@example.test", PASSWORD)
        self.server.directory.add_user("bob@example.test", PASSWORD)

    def delivered(self) -> Any:
        files: list[str] = []

        def arrived() -> bool:
            files[:] = maildir_files(self.server, "bob@example.test")
            return bool(files)

        return wait_for(arrived)

    @defer.inlineCallbacks
    def test_submission_is_signed(self) -> Any:
        """An authenticated submission arrives with OpenDKIM's DKIM-Signature, which verifies."""

        def send() -> None:
            with smtplib.SMTP(*self.server.address("submission")) as s:
                s.ehlo("client.example.test")
                s.login("alice@example.test", PASSWORD)
                s.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)

        yield deferToThread(send)
        yield self.delivered()
        [path] = maildir_files(self.server, "bob@example.test")
        data = read(path)
        header = data.split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"\r\nDKIM-Signature:", header)
        # Our trace fields stay on top; the signature comes above the client's fields.
        self.assertTrue(data.startswith(b"Return-Path: <alice@example.test>\r\n"))
        self.assertLess(header.index(b"DKIM-Signature:"), header.index(b"From: Alice"))
        self.assertEqual(dkim.key_queries(data), ["sel._domainkey.example.test"])
        [result] = dkim.verify(data, {"sel._domainkey.example.test": Answer.of(RECORD.encode())})
        self.assertEqual((result.result, result.domain), ("pass", "example.test"), result)
        self.assertTrue(data.endswith(MESSAGE.split(b"\r\n\r\n", 1)[1]))

    @defer.inlineCallbacks
    def test_unauthenticated_is_not_signed(self) -> Any:
        """Without AUTH (and from a client outside InternalHosts) OpenDKIM does not sign."""

        def send() -> None:
            with smtplib.SMTP(*self.server.address("mta")) as s:
                s.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)

        yield deferToThread(send)
        yield self.delivered()
        [path] = maildir_files(self.server, "bob@example.test")
        self.assertNotIn(b"DKIM-Signature:", read(path))
