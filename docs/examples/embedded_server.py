"""
Embedding txmail in a Twisted application: SMTP and IMAP for a domain, with
mailboxes kept in memory, users from your own directory, and a delivery hook.

Run it::

    python docs/examples/embedded_server.py --smtp-port 2525 --imap-port 1143 \\
        --user alice@example.test:secret --block spamtrap@example.test

then send mail to ``alice@example.test`` on port 2525 and read it with any
IMAP client on port 1143 (login ``alice@example.test``, password
``secret``).  Everything is forgotten when it stops.

Or import it and use :func:`make_service` (the test suite does, see
``tests/test_embedding.py``).

How it fits together
--------------------
* :class:`txmail.config.Settings` built in code with
  :meth:`~txmail.config.Settings.validated` (the same checks as a TOML
  file), no configuration file.
* :class:`txmail.store.memory.MemoryProvider`: the mailbox store
  (:class:`txmail.interfaces.IMailStoreProvider`).  Any backend that passes
  the conformance suite can take its place.
* :class:`DictDirectory`: a minimal :class:`txmail.interfaces.IDirectory`
  standing in for a user database.  Passwords are stored as SCRAM-SHA-256
  verifiers (:func:`txmail.auth.passwords.make_credentials`), never in
  clear.  A database-backed directory returns Deferreds from its queries in
  the same places.
* :class:`AuditHook`: a :class:`txmail.interfaces.IDeliveryHook` that sees
  every message received over SMTP before delivery: it logs it, refuses
  mail for blocked addresses (``550 5.7.1``) and adds an archive address to
  every message's recipients (a BCC copy).
* :func:`txmail.service.build_service` wires them into one
  :class:`~txmail.service.MailServer` (a Twisted ``MultiService``): give it
  to your application with ``setServiceParent`` or start it yourself.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmail import (
    HookResult,
    IDeliveryHook,
    IDirectory,
    MailServer,
    MemoryProvider,
    NoSuchUser,
    Settings,
    build_service,
    make_credentials,
)
from txmail.auth.passwords import ScramCredentials
from txmail.model import Envelope, MessageSource

__all__ = ["AuditHook", "DictDirectory", "main", "make_service"]


@implementer(IDirectory)
class DictDirectory:
    """
    Users and aliases in dictionaries: the shape of a database-backed
    directory without the database.

    Args:
        domains: the local domains; the first is the primary one (login
            names without ``@`` belong to it).
        users: address -> password; the passwords are turned into SCRAM
            verifiers at once and not kept.
        aliases: address -> the addresses it stands for.
    """

    def __init__(
        self,
        domains: Iterable[str],
        users: Mapping[str, str] | None = None,
        aliases: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.domains = [d.lower() for d in domains]
        self.credentials: dict[str, ScramCredentials] = {}
        self.aliases = {k.lower(): [a.lower() for a in v] for k, v in (aliases or {}).items()}
        for address, password in (users or {}).items():
            self.add_user(address, password)

    def add_user(self, address: str, password: str) -> None:
        """Add (or change) a user; what a sign-up form would do."""
        self.credentials[self._qualify(address)] = make_credentials(password)

    def _qualify(self, name: str) -> str:
        name = name.strip().lower()
        return name if "@" in name else f"{name}@{self.domains[0]}"

    def _base(self, address: str) -> str:
        """``user+tag@domain`` is ``user@domain`` (plus addressing)."""
        local, _, domain = self._qualify(address).rpartition("@")
        return f"{local.split('+', 1)[0]}@{domain}"

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    def _expand(self, address: str, seen: set[str]) -> list[str]:
        """The users (and remote addresses) *address* stands for; aliases recursively, loops cut."""
        if address in seen:
            return []
        seen.add(address)
        if address in self.credentials:
            return [address]
        found = []
        for target in self.aliases.get(address, []):
            local = self.is_local_domain(target.rpartition("@")[2])
            found.extend(self._expand(target, seen) if local else [target])
        return found

    def resolve_recipient(self, address: str) -> defer.Deferred[list[str]]:
        found = list(dict.fromkeys(self._expand(self._base(address), set())))
        if not found:
            return defer.fail(NoSuchUser(address))
        return defer.succeed(found)

    def get_credentials(self, username: str) -> defer.Deferred[ScramCredentials | None]:
        return defer.succeed(self.credentials.get(self._qualify(username)))

    def canonical_user(self, username: str) -> defer.Deferred[str | None]:
        name = self._qualify(username)
        return defer.succeed(name if name in self.credentials else None)

    def owns_address(self, user: str, address: str) -> defer.Deferred[bool]:
        return defer.succeed(self._qualify(user) in self._expand(self._base(address), set()))


@implementer(IDeliveryHook)
class AuditHook:
    """
    Sees every message before delivery.

    Args:
        blocked: addresses whose mail is refused (``550 5.7.1``) after DATA.
        archive: an address that gets a copy of every message, or ``None``.

    Attributes:
        seen: ``(message id, sender, recipients)`` of each message it saw,
            in order.
    """

    log = Logger()

    def __init__(self, blocked: Iterable[str] = (), archive: str | None = None) -> None:
        self.blocked = {a.lower() for a in blocked}
        self.archive = archive
        self.seen: list[tuple[str, str, tuple[str, ...]]] = []

    def before_delivery(self, envelope: Envelope, message: MessageSource) -> HookResult:
        self.seen.append((envelope.message_id, envelope.mail_from, envelope.rcpt_to))
        self.log.info(
            "message {message_id} from <{sender}> to {recipients}, {size} octets",
            message_id=envelope.message_id,
            sender=envelope.mail_from,
            recipients=", ".join(envelope.rcpt_to),
            size=message.size,
        )
        if any(r.lower() in self.blocked for r in envelope.rcpt_to):
            return HookResult.reject("550 5.7.1 Delivery to this address is not allowed")
        if self.archive is not None and self.archive not in envelope.rcpt_to:
            return HookResult.rewrite([*envelope.rcpt_to, self.archive])
        return HookResult.accept()


def make_service(
    smtp_port: int = 2525,
    imap_port: int = 1143,
    *,
    interface: str = "127.0.0.1",
    domain: str = "example.test",
    users: Mapping[str, str] | None = None,
    blocked: Iterable[str] = (),
    archive: str | None = None,
    data_dir: str | None = None,
    reactor: Any = None,
) -> MailServer:
    """
    Build the embedded server (not started).

    Args:
        smtp_port, imap_port: ports to listen on (``0``: any free port; ask
            ``server.address("mta")`` / ``server.address("imap")`` once it
            listens).
        interface: the address to listen on.
        domain: the one local domain.
        users: address -> password.
        blocked, archive: see :class:`AuditHook`.
        data_dir: where the SMTP spool and the outbound queue live (the
            mailboxes are in memory); default a new temporary directory.
        reactor: the reactor; default the global one.

    Returns:
        the :class:`~txmail.service.MailServer`; its ``directory`` is the
        :class:`DictDirectory`, its ``stores`` the ``MemoryProvider``, and
        its ``hook`` attribute the :class:`AuditHook`.
    """
    settings = Settings.validated(
        hostname=f"mail.{domain}",
        domains=[domain],
        data_dir=data_dir or tempfile.mkdtemp(prefix="txmail-embedded-"),
        smtp=[f"tcp:{smtp_port}:interface={interface}"],
        submission=[],
        imap=[f"tcp:{imap_port}:interface={interface}"],
        # Only local mail: no queue runner looking up other domains in DNS.
        outbound_enabled=False,
        threads=2,
    )
    directory = DictDirectory([domain], users or {})
    hook = AuditHook(blocked, archive)
    server = build_service(
        settings, reactor=reactor, directory=directory, stores=MemoryProvider(), delivery_hook=hook
    )
    server.hook = hook  # type: ignore[attr-defined]
    return server


def main(argv: list[str] | None = None) -> None:
    """Run the example until interrupted."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    parser = argparse.ArgumentParser(description="txmail embedded in a Twisted application")
    parser.add_argument("--smtp-port", type=int, default=2525)
    parser.add_argument("--imap-port", type=int, default=1143)
    parser.add_argument("--domain", default="example.test")
    parser.add_argument(
        "--user", action="append", default=[], metavar="ADDRESS:PASSWORD", help="a user (repeatable)"
    )
    parser.add_argument(
        "--block", action="append", default=[], metavar="ADDRESS", help="refuse mail for ADDRESS"
    )
    parser.add_argument("--archive", metavar="ADDRESS", help="copy every message to ADDRESS")
    args = parser.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user) or {f"alice@{args.domain}": "secret"}

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    with tempfile.TemporaryDirectory(prefix="txmail-embedded-") as data_dir:
        server = make_service(
            args.smtp_port,
            args.imap_port,
            domain=args.domain,
            users=users,
            blocked=args.block,
            archive=args.archive,
            data_dir=data_dir,
        )
        reactor.callWhenRunning(server.startService)  # type: ignore[attr-defined]
        reactor.addSystemEventTrigger("before", "shutdown", server.stopService)  # type: ignore[attr-defined]
        reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
