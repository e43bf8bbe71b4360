"""
txmail behind a real Postfix (Debian's package), as Dovecot's LMTP is:
a private Postfix instance on loopback accepts mail over SMTP and delivers
it with ``virtual_transport = lmtp:unix:...`` into txmail, whose users then
read it over IMAP.  A recipient txmail does not know is refused on its own
(Postfix bounces it to the sender, also a txmail user) while the others are
delivered; so is a recipient over quota: a full mailbox gets 452 4.2.2 at
RCPT (Postfix keeps that copy deferred), a message larger than the whole
quota 552 5.2.2 after the data (Postfix bounces that copy).

The test needs root (Postfix's master starts as root and runs its daemons
as the ``postfix`` user) and the ``postfix`` package, which ``.ci/run``
installs; without them it is skipped, saying why.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import smtplib
import socket
import tempfile
from typing import Any

from twisted.internet import defer, utils
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e._server import maildir_files, start_server
from tests.e2e.test_outbound import wait_for

PASSWORD = "correct horse"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
MASTER_CF = "/usr/share/postfix/master.cf.dist"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postfix_config(root: str, smtp_port: int, lmtp_socket: str) -> str:
    """Write a private Postfix configuration under *root*; its config directory."""
    etc = os.path.join(root, "etc")
    for sub in ("etc", "spool", "data"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    shutil.chown(os.path.join(root, "data"), "postfix")
    main = f"""
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions =
smtpd_reject_unlisted_recipient = no
relayhost =
default_transport = error:no outbound delivery in this test
relay_transport = error:no outbound delivery in this test
local_transport = error:no local delivery in this test
alias_maps =
alias_database =
virtual_mailbox_domains = example.test
virtual_transport = lmtp:unix:{lmtp_socket}
maillog_file_prefixes = /var, /dev/stdout, {root}
maillog_file = {root}/postfix.log
smtputf8_enable = no
biff = no
append_dot_mydomain = no
"""
    with open(os.path.join(etc, "main.cf"), "w") as f:
        f.write(main)
    lines = []
    with open(MASTER_CF) as f:
        for line in f:
            fields = line.split()
            if line.startswith("smtp") and len(fields) > 1 and fields[1] == "inet":
                line = f"127.0.0.1:{smtp_port} inet n - n - - smtpd\n"
            elif line[:1].isalpha() and len(fields) >= 8:
                fields[4] = "n"  # no chroot: the LMTP socket lives outside any jail
                line = " ".join(fields) + "\n"
            lines.append(line)
    with open(os.path.join(etc, "master.cf"), "w") as f:
        f.writelines(lines)
    return etc


class PostfixLMTPTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        if not os.path.exists(POSTFIX) or not os.path.exists(MASTER_CF):
            raise SkipTest("Postfix is not installed (Debian package postfix; .ci/run installs it)")
        if os.geteuid() != 0:
            raise SkipTest("a private Postfix instance needs root to start its master")
        self.root = tempfile.mkdtemp(prefix="txmail-pf-")
        os.chmod(self.root, 0o755)  # Postfix's daemons (user postfix) reach the queue and the socket
        self.addCleanup(shutil.rmtree, self.root, True)
        # Postfix's lmtp client runs as the postfix user: the socket must be open to it.
        self.socket_path = os.path.join(self.root, "lmtp")
        self.server = yield start_server(
            self,
            lmtp=[f"unix:{self.socket_path}:mode=666"],
            imap=["tcp:0:interface=127.0.0.1"],
            # carol's mailbox is full already; dave's quota is smaller than any message.
            quota_users={"carol@example.test": 40, "dave@example.test": 60},
        )
        for user in (
            "alice@example.test",
            "bob@example.test",
            "sender@example.test",
            "carol@example.test",
            "dave@example.test",
        ):
            self.server.directory.add_user(user, PASSWORD)
        inbox = yield (yield self.server.stores.store_for("carol@example.test")).get_mailbox("INBOX")
        yield inbox.append(b"Subject: old\r\n\r\n" + b"x" * 30 + b"\r\n")
        self.smtp_port = free_port()
        self.etc = postfix_config(self.root, self.smtp_port, self.socket_path)
        yield self.postfix("check")
        yield self.postfix("start")
        self.addCleanup(self.postfix, "stop")
        yield wait_for(self.smtp_listening, timeout=20)

    @defer.inlineCallbacks
    def postfix(self, command: str) -> Any:
        """Run ``postfix -c ETC COMMAND`` as a child of the reactor; fail with its log if it fails."""
        out, err, code = yield utils.getProcessOutputAndValue(
            POSTFIX, ["-c", self.etc, command], env=dict(os.environ)
        )
        if code != 0:
            raise RuntimeError(
                f"postfix {command} failed ({code}): {out!r} {err!r}\n{self.postfix_log()[-2000:]}"
            )

    def smtp_listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.smtp_port)) == 0

    def postfix_log(self) -> str:
        try:
            with open(os.path.join(self.root, "postfix.log")) as f:
                return f.read()
        except OSError:
            return ""

    def imap_bodies(self, user: str) -> defer.Deferred[list[bytes]]:
        host, port = self.server.address("imap")

        def fetch() -> list[bytes]:
            imap = imaplib.IMAP4(host, port)
            try:
                imap.login(user, PASSWORD)
                imap.select("INBOX")
                _, data = imap.search(None, "ALL")
                return [imap.fetch(n, "(BODY.PEEK[])")[1][0][1] for n in data[0].split()]
            finally:
                imap.logout()

        return deferToThread(fetch)

    @defer.inlineCallbacks
    def test_postfix_delivers_through_lmtp(self) -> Any:
        """Postfix hands mail to txmail over LMTP: two users get it, the unknown one bounces alone."""
        message = b"From: sender@example.test\r\nSubject: via postfix\r\n\r\nHello from Postfix.\r\n"

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=20) as s:
                s.sendmail(
                    "sender@example.test",
                    ["alice@example.test", "nobody@example.test", "bob@example.test"],
                    message,
                )

        yield deferToThread(send)
        try:
            for user in ("alice@example.test", "bob@example.test", "sender@example.test"):
                yield wait_for(lambda user=user: maildir_files(self.server, user) != [], timeout=30)
        except AssertionError:
            self.fail(f"Postfix did not deliver; its log:\n{self.postfix_log()}")
        for user in ("alice@example.test", "bob@example.test"):
            (body,) = yield self.imap_bodies(user)
            self.assertIn(b"with LMTP id", body)
            self.assertIn(b"by mx.example.test (Postfix)", body)
            self.assertTrue(body.endswith(b"Hello from Postfix.\r\n"))
        (bounce,) = yield self.imap_bodies("sender@example.test")
        self.assertIn(b"nobody@example.test", bounce)
        self.assertIn(b"550 5.1.1", bounce)
        self.assertIn(b"MAILER-DAEMON", bounce)
        log = self.postfix_log()
        self.assertIn("status=sent", log)
        self.assertIn("status=bounced", log)

    @defer.inlineCallbacks
    def test_over_quota_recipients_fail_alone(self) -> Any:
        """A full mailbox is deferred (452 4.2.2 at RCPT), one too small bounced (552 5.2.2); alice gets the mail."""
        message = b"From: sender@example.test\r\nSubject: quota\r\n\r\nFits for alice only.\r\n"

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=20) as s:
                s.sendmail(
                    "sender@example.test",
                    ["carol@example.test", "alice@example.test", "dave@example.test"],
                    message,
                )

        yield deferToThread(send)
        try:
            for user in ("alice@example.test", "sender@example.test"):
                yield wait_for(lambda user=user: maildir_files(self.server, user) != [], timeout=30)
            yield wait_for(lambda: "status=deferred" in self.postfix_log(), timeout=30)
        except AssertionError:
            self.fail(f"Postfix did not deliver as expected; its log:\n{self.postfix_log()}")
        (body,) = yield self.imap_bodies("alice@example.test")
        self.assertTrue(body.endswith(b"Fits for alice only.\r\n"))
        self.assertEqual(maildir_files(self.server, "dave@example.test"), [])
        self.assertEqual(len(maildir_files(self.server, "carol@example.test")), 1)  # the old one only
        (bounce,) = yield self.imap_bodies("sender@example.test")
        self.assertIn(b"dave@example.test", bounce)
        self.assertIn(b"552 5.2.2", bounce)
        self.assertNotIn(
            b"carol@example.test", bounce.split(b"\r\n\r\n", 1)[1].split(b"Content-Type: message")[0]
        )
        log = self.postfix_log()
        deferred = [line for line in log.splitlines() if "status=deferred" in line]
        self.assertTrue(
            any("carol@example.test" in line and "452 4.2.2" in line for line in deferred), deferred
        )
