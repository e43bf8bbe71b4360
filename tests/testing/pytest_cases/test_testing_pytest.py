"""
pytest tests of txmail.testing's blocking API (BlockingTestServer,
running_server): plain functions, no Twisted in sight.

Not collected by trial (this directory is not a package); run by
``tests/testing/test_testing_trial.py`` as
``python -m pytest <this file> -q -p no:cacheprovider`` in a subprocess,
since the blocking API runs the one reactor of its process in a thread.
"""

from __future__ import annotations

import email
import imaplib
import poplib
import smtplib
from collections.abc import Iterator

import pytest

from txmail.errors import NoSuchUser
from txmail.testing import BlockingTestServer, WaitTimeout, running_server

ALICE = "alice@example.test"
PASSWORD = "correct horse"


@pytest.fixture
def server() -> Iterator[BlockingTestServer]:
    with running_server() as running:
        running.add_user(ALICE, PASSWORD)
        yield running


def message(subject: str, to: str = ALICE, sender: str = "bob@remote.test") -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello\r\n".encode()


def test_deliver_and_read(server: BlockingTestServer) -> None:
    with smtplib.SMTP(*server.smtp_address, timeout=20) as smtp:
        smtp.sendmail("bob@remote.test", [ALICE], message("hello pytest"))
    [raw] = server.wait_for_messages(ALICE, 1, timeout=10)
    assert email.message_from_bytes(raw)["Subject"] == "hello pytest"
    assert server.messages_for(ALICE) == [raw]

    imap = imaplib.IMAP4(*server.imap_address, timeout=20)
    try:
        imap.login(ALICE, PASSWORD)
        _, data = imap.select("INBOX")
        assert data == [b"1"]
    finally:
        imap.logout()

    pop = poplib.POP3(*server.pop3_address, timeout=20)
    try:
        pop.user(ALICE)
        pop.pass_(PASSWORD)
        assert pop.stat()[0] == 1
    finally:
        pop.quit()


def test_alias(server: BlockingTestServer) -> None:
    server.add_alias("sales@example.test", ALICE)
    with smtplib.SMTP(*server.smtp_address, timeout=20) as smtp:
        smtp.sendmail("bob@remote.test", ["sales@example.test"], message("to sales"))
    [raw] = server.wait_for_messages(ALICE, timeout=10)
    assert b"Subject: to sales" in raw


def test_outbound_and_bounce(server: BlockingTestServer) -> None:
    server.set_outbound_reply("gone@remote.test", 550, "no such user")
    with smtplib.SMTP(*server.submission_address, timeout=20) as smtp:
        smtp.login(ALICE, PASSWORD)
        smtp.sendmail(ALICE, ["carol@remote.test"], message("relayed", "carol@remote.test", ALICE))
        smtp.sendmail(ALICE, ["gone@remote.test"], message("bounced", "gone@remote.test", ALICE))
    [captured] = server.wait_for_outbound(1, timeout=10)
    assert captured.recipients == ("carol@remote.test",)
    assert captured.host == "mx.remote.test"
    assert b"Subject: relayed" in captured.message
    [bounce] = server.wait_for_messages(ALICE, 1, timeout=10)
    assert email.message_from_bytes(bounce).get_content_type() == "multipart/report"
    assert b"gone@remote.test" in bounce


def test_wait_timeout_and_unknown_user(server: BlockingTestServer) -> None:
    with pytest.raises(WaitTimeout, match="0 of 1"):
        server.wait_for_messages(ALICE, 1, timeout=0.01)
    with pytest.raises(NoSuchUser):
        server.messages_for("nobody@example.test")


def test_servers_one_after_another() -> None:
    """The reactor thread outlives a server: a second one starts in the same process."""
    for domain in ("first.test", "second.test"):
        with running_server([domain]) as server:
            assert server.add_user("u", PASSWORD) == f"u@{domain}"
            assert server.messages_for(f"u@{domain}") == []
    with pytest.raises(RuntimeError, match="not running"):
        server.messages_for(f"u@{domain}")
