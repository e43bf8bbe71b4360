"""
A minimal aiosmtpd server that delivers every accepted message durably into a Maildir.

This is the "plain asyncio Python" comparison point for ``benchmarks/smtp_delivery.py``.
It runs under a separate virtualenv (``/work/benchvenv``, with ``aiosmtpd`` installed) and is
never imported by txmail.

For each recipient ``userN@DOMAIN`` the message is written to
``ROOT/userN/Maildir/tmp/<unique>``, ``fsync``-ed, renamed into ``new/`` and then ``new/``
itself is ``fsync``-ed, all *before* the ``250`` reply to the end of DATA (RFC 5321
section 4.1.1.4: the server takes responsibility for the message when it replies 250).
The blocking file work runs in a thread pool (``loop.run_in_executor``) so one message's
``fsync`` does not stall the other connections.

Usage::

    python aiosmtpd_maildir.py --root DIR --domain example.test --users 10 [--port 0]

The server prints ``LISTENING <port>`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["MaildirHandler", "deliver", "main"]

_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def deliver(maildir: str, data: bytes) -> str:
    """Write ``data`` into ``maildir`` (tmp, fsync, rename into new, fsync new); return the name."""
    name = f"{time.time_ns()}.P{os.getpid()}Q{next(_counter)}.{_HOST}"
    tmp_path = os.path.join(maildir, "tmp", name)
    new_dir = os.path.join(maildir, "new")
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp_path, os.path.join(new_dir, name))
    dir_fd = os.open(new_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return name


class MaildirHandler:
    """aiosmtpd handler: accept ``userN@domain`` for known users, deliver at end of DATA."""

    def __init__(self, root: str, domain: str, users: set[str],
                 executor: ThreadPoolExecutor) -> None:
        self.root = root
        self.domain = domain.lower()
        self.users = users
        self.executor = executor

    def _maildir(self, address: str) -> str | None:
        local, _, domain = address.rpartition("@")
        if domain.lower() != self.domain or local not in self.users:
            return None
        return os.path.join(self.root, local, "Maildir")

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        """Accept recipients that have a Maildir, reject the rest (RFC 5321 section 4.2.2)."""
        if self._maildir(address) is None:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Deliver to every recipient durably, then (and only then) reply 250."""
        content = envelope.original_content or b""
        loop = asyncio.get_running_loop()
        try:
            for rcpt in envelope.rcpt_tos:
                maildir = self._maildir(rcpt)
                assert maildir is not None
                header = (f"Return-Path: <{envelope.mail_from}>\r\n"
                          f"Delivered-To: {rcpt}\r\n").encode()
                await loop.run_in_executor(self.executor, deliver, maildir, header + content)
        except OSError:
            return "451 4.3.0 Local delivery failed"
        return "250 2.0.0 OK delivered"


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="ROOT/userN/Maildir/{tmp,new,cur}")
    p.add_argument("--domain", default="example.test")
    p.add_argument("--users", type=int, default=10, help="users user1..userN")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--threads", type=int, default=20, help="fsync thread pool size")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    users = {f"user{i}" for i in range(1, args.users + 1)}
    for user in users:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(args.root, user, "Maildir", sub), exist_ok=True)
    executor = ThreadPoolExecutor(max_workers=args.threads)
    handler = MaildirHandler(args.root, args.domain, users, executor)
    loop = asyncio.get_running_loop()

    def factory() -> Any:
        # hostname given explicitly: aiosmtpd would otherwise call getfqdn() per connection.
        return SMTP(handler, hostname="aiosmtpd.bench.test", data_size_limit=64 * 1024 * 1024)

    server = await loop.create_server(factory, host=args.host, port=args.port, backlog=512)
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()
    executor.shutdown(wait=True)


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT."""
    asyncio.run(_serve(_parse(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
