"""Start the real txmail service on loopback ephemeral ports for end-to-end tests."""

from __future__ import annotations

import contextlib
import imaplib
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from txmail.config import load_config
from txmail.errors import UserExists
from txmail.service import MailServer, build_service


@defer.inlineCallbacks
def start_server(test: TestCase, config: str | None = None, **overrides: Any) -> Any:
    """
    Build and start a MailServer with its data in a temporary directory,
    SMTP and submission on 127.0.0.1 port 0, domain example.test; stop it
    when the test ends.  *overrides* are Settings attributes (for example
    ``pop3=["tcp:0:interface=127.0.0.1"]`` adds a POP3 listener, role
    ``"pop3"``).  The outbound queue runner is off unless
    ``outbound_enabled=True``.  *config* is the text of a TOML configuration
    file to read first (the overrides win), for tests of its tables.
    """
    data_dir = os.path.abspath(test.mktemp())
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "hostname": "mx.example.test",
        "domains": ["example.test"],
        "smtp": ["tcp:0:interface=127.0.0.1"],
        "submission": ["tcp:0:interface=127.0.0.1"],
        "threads": 4,
        # No outbound delivery unless a test asks for it (outbound_enabled=True):
        # the queue runner would look remote domains up in the machine's DNS.
        "outbound_enabled": False,
    }
    values.update(overrides)
    path = None
    if config is not None:
        path = test.mktemp()
        with open(path, "w") as f:
            f.write(config)
    settings = load_config(path, values)
    server: MailServer = build_service(settings, reactor=reactor)
    server.startService()
    test.addCleanup(server.stopService)
    yield server.when_listening()
    return server


def maildir_files(server: MailServer, user: str, sub: str = "new") -> list[str]:
    """Paths of the message files in a user's INBOX Maildir sub-directory."""
    local, domain = user.split("@")
    path = os.path.join(server.settings.data_dir, "mail", domain, local, sub)
    if not os.path.isdir(path):
        return []
    return sorted(os.path.join(path, n) for n in os.listdir(path))


class IMAPRestartCase(TestCase):
    """
    Base of the end-to-end tests that start the real service with IMAP on
    127.0.0.1 port 0 over a data directory, start it again on the same
    directory (a restart), and log in with imaplib as :attr:`user`.
    """

    timeout = 120
    user = "alice@example.test"
    password = "imap secret"
    #: The text of a TOML configuration file to start with, or ``None``.
    config: str | None = None

    @defer.inlineCallbacks
    def start(self, data_dir: str) -> Any:
        server = yield start_server(
            self, config=self.config, imap=["tcp:0:interface=127.0.0.1"], data_dir=data_dir
        )
        with contextlib.suppress(UserExists):  # kept across the restart
            server.directory.add_user(self.user, self.password)
        return server

    def client(self, server: Any) -> Any:
        host, port = server.address("imap")
        c = imaplib.IMAP4(host, port, timeout=20)
        c.login(self.user, self.password)
        return c
