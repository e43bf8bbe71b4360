"""
End to end: Debian's ``fetchmail`` (a POP3 client nobody here wrote) downloads
from the real service.

SMTP delivers three messages; fetchmail retrieves them over POP3 (USER/PASS,
RFC 1939) and hands each to an MDA that writes it to its own file.  With
``set invisible``, ``no rewrite`` and ``no stripcr`` fetchmail passes the
message through untouched, so every file must equal, byte for byte, the
message as stored in the Maildir (dot-stuffing undone, CRLF kept).  Without
``keep`` fetchmail deletes what it fetched (DELE, then QUIT: RFC 1939
section 6), so the maildrop is empty afterwards; with ``keep`` it stays.
"""

from __future__ import annotations

import getpass
import os
import shutil
import smtplib
import subprocess
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e._server import maildir_files, start_server

__all__ = ["FetchmailTests"]

USER = "alice@example.test"
PASSWORD = "fetch me if you can"

# Lines that start with a dot exercise dot-stuffing both ways (RFC 5321
# section 4.5.2 on the way in, RFC 1939 section 3 on the way out).
MESSAGES = [
    b"From: <sender@remote.test>\r\nTo: <alice@example.test>\r\nSubject: one\r\n"
    b"Message-ID: <1@remote.test>\r\n\r\nFirst message.\r\n",
    b"From: <sender@remote.test>\r\nTo: <alice@example.test>\r\nSubject: two\r\n"
    b"Message-ID: <2@remote.test>\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n",
    b"From: <sender@remote.test>\r\nTo: <alice@example.test>\r\nSubject: three\r\n"
    b"Message-ID: <3@remote.test>\r\n\r\n" + b"A line of text that fills the body.\r\n" * 3000,
]


def _quote(value: str) -> str:
    """A double-quoted fetchmailrc string (backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class FetchmailTests(TestCase):
    """fetchmail retrieves mail delivered over SMTP from the POP3 listener."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.fetchmail = shutil.which("fetchmail")
        if self.fetchmail is None:
            raise SkipTest("fetchmail is not installed: apt-get install fetchmail")
        self.server = yield start_server(self, pop3=["tcp:0:interface=127.0.0.1"])
        self.server.directory.add_user(USER, PASSWORD)
        yield deferToThread(self._deliver)
        self.stored = sorted(self._stored())
        self.assertEqual(len(self.stored), len(MESSAGES))

    def _deliver(self) -> None:
        """Send the three messages over SMTP to the MTA port."""
        with smtplib.SMTP(*self.server.address("mta")) as s:
            for body in MESSAGES:
                s.sendmail("sender@remote.test", [USER], body)

    def _stored(self) -> list[bytes]:
        """The bytes of every message in the user's INBOX Maildir (new/ and cur/)."""
        out = []
        for sub in ("new", "cur"):
            for path in maildir_files(self.server, USER, sub):
                with open(path, "rb") as f:
                    out.append(f.read())
        return out

    def _fetch(self, keep: bool) -> tuple[int, str, list[bytes]]:
        """Run fetchmail once with a generated rc file; return its status, output, messages."""
        home = os.path.abspath(self.mktemp())
        out_dir = os.path.join(home, "out")
        os.makedirs(out_dir)
        host, port = self.server.address("pop3")
        # One file per message: fetchmail starts the MDA once per message, via /bin/sh.
        mda = f"cat > $(mktemp {out_dir}/msg.XXXXXX)"
        rc = "\n".join([
            "set no syslog",
            "set invisible",  # no Received: header of its own
            f"poll {host} service {port} protocol POP3 auth password timeout 20",
            f"  user {_quote(USER)} there with password {_quote(PASSWORD)}"
            f" is {_quote(getpass.getuser())} here",
            f"  options fetchall {'keep' if keep else 'no keep'} no rewrite no stripcr"
            " sslproto ''",  # plain POP3, no opportunistic STLS
            f"  mda {_quote(mda)}",
            "",
        ])
        rc_path = os.path.join(home, "fetchmailrc")
        fd = os.open(rc_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(rc)
        env = dict(os.environ, HOME=home, FETCHMAILHOME=home)
        assert self.fetchmail is not None
        proc = subprocess.run(
            # Our own lock file: as root fetchmail locks /var/run/fetchmail.pid,
            # which two tests running at once (trial -j) would share.
            [self.fetchmail, "--fetchmailrc", rc_path, "--pidfile", os.path.join(home, "fetchmail.pid"),
             "--nodetach", "--verbose"],
            cwd=home, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=50,
        )
        got = []
        for name in sorted(os.listdir(out_dir)):
            with open(os.path.join(out_dir, name), "rb") as f:
                got.append(f.read())
        return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace"), got

    @defer.inlineCallbacks
    def test_fetch_and_delete(self) -> Any:
        """fetchmail downloads all three messages byte-exact and, without keep, deletes them."""
        status, output, got = yield deferToThread(self._fetch, False)
        self.assertEqual(status, 0, output)
        self.assertEqual(sorted(got), self.stored, output)
        for body in MESSAGES:
            self.assertEqual(sum(1 for m in got if m.endswith(body)), 1)
        self.assertIn("3 messages for", output)
        self.assertEqual(self._stored(), [])

    @defer.inlineCallbacks
    def test_fetch_and_keep(self) -> Any:
        """With keep the messages stay on the server, and a second run finds them again."""
        status, output, got = yield deferToThread(self._fetch, True)
        self.assertEqual(status, 0, output)
        self.assertEqual(sorted(got), self.stored, output)
        self.assertEqual(sorted(self._stored()), self.stored)
        status, output, again = yield deferToThread(self._fetch, True)
        self.assertEqual(status, 0, output)
        self.assertEqual(sorted(again), self.stored, output)
