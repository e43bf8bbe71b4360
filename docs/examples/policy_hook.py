"""
A policy hook in an embedded txmail: a port 25 server for one domain whose
own rules run beside the server's built-in checks.

Run it::

    python docs/examples/policy_hook.py --smtp-port 2525 --imap-port 1143 \\
        --user alice@example.test:secret --block-domain spammer.example

then send mail to ``alice@example.test`` on port 2525 and read it with any
IMAP client on port 1143 (login ``alice@example.test``, password
``secret``).  Mail is kept in memory and forgotten when the program stops.

Or import it and use :func:`make_service` (the test suite does, see
``tests/test_policy_example.py``).

What :class:`HouseRules` does
-----------------------------
* **connect**: a client without forward-confirmed reverse DNS
  (``session.client_name`` is ``None``) is slowed down: its greeting, and
  later each of its RCPT replies, waits ``tarpit`` seconds
  (:meth:`~txmail.policy.hooks.Verdict.tarpit`).  What it learnt is kept in
  ``session.notes`` for the later stages.
* **MAIL FROM**: a sender in a blocked domain is refused with ``550 5.7.1``
  (:meth:`~txmail.policy.hooks.Verdict.reject`); no transaction starts.
* **end of data**: every message gets an ``X-House-Rules`` header field
  (:meth:`~txmail.policy.hooks.Verdict.add_header`), and a message whose
  Subject holds ``[SPAM]`` goes to the recipients' Junk folder
  (:meth:`~txmail.policy.hooks.Verdict.deliver_to`) instead of their INBOX.
* Clients in the trusted networks (``session.trusted``) are let through
  untouched, as the server's own checks do.

How it fits together
--------------------
* :func:`txmail.service.build_service` takes the policy with
  ``policies=[rules]``.  The server asks its own policies first (rate
  limits, then SPF, DKIM, ARC and DMARC on port 25), then ours, then the
  one that writes ``Authentication-Results``, so our header field sits
  next to the server's results (see ``MailServer.policies``).
* Reverse DNS is looked up by the server at connect (the same resolver as
  every check: ``build_service(dns=...)``, the system's by default).
* The example trusts no network (``[policy] trusted_networks = []``), so
  that its rules apply to a client on this machine too; a real server
  trusts the networks of its own applications.
* Users live in the default :class:`txmail.directory.FileDirectory` of a
  temporary data directory, mailboxes in a
  :class:`txmail.store.memory.MemoryProvider`.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger

from txmail import MailServer, MemoryProvider, Settings, build_service
from txmail.policy.hooks import MessageInfo, Policy, RecipientInfo, SessionInfo, Verdict

__all__ = ["HouseRules", "main", "make_service"]

#: The ``session.notes`` key this policy uses (prefixed, as every policy shares the dictionary).
NO_REVERSE_DNS = "house_rules.no_reverse_dns"

#: How much of a large message is read to find its header section.
HEADER_LIMIT = 64 * 1024


class HouseRules(Policy):
    """
    The site's own rules (see the module notes).

    Args:
        blocked_domains: sender domains refused at MAIL FROM.
        tarpit: seconds the greeting and each RCPT reply of a client
            without reverse DNS wait.
        spam_folder: where messages marked ``[SPAM]`` go.
        run_blocking: runs a blocking function off the reactor thread
            (``run_blocking(fn, *args) -> Deferred``), to read a large
            message from its file; default Twisted's thread pool.

    Attributes:
        tarpitted: the addresses of the clients slowed down, in order.
        refused: the senders refused at MAIL FROM, in order.
    """

    log = Logger()
    #: Port 25 only: submission clients authenticate, and connect from
    #: addresses that rarely have reverse DNS.
    roles = frozenset({"mta"})

    def __init__(
        self,
        blocked_domains: Iterable[str] = (),
        *,
        tarpit: float = 5.0,
        spam_folder: str = "Junk",
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
    ) -> None:
        self.blocked_domains = {d.lower().rstrip(".") for d in blocked_domains}
        self.tarpit = tarpit
        self.spam_folder = spam_folder
        self.run_blocking = run_blocking or threads.deferToThread
        self.tarpitted: list[str] = []
        self.refused: list[str] = []

    def on_connect(self, session: SessionInfo) -> Verdict | None:
        if session.trusted:
            return None
        if session.client_name is None:  # no forward-confirmed reverse DNS
            session.notes[NO_REVERSE_DNS] = True
            self.tarpitted.append(session.client_address)
            self.log.info(
                "tarpitting {peer}: no reverse DNS ({iprev})",
                peer=session.client_address,
                iprev=session.iprev,
                session_id=session.session_id,
            )
            return Verdict.tarpit(self.tarpit)
        return None

    def on_mail(self, session: SessionInfo) -> Verdict | None:
        tx = session.transaction
        assert tx is not None  # always set at MAIL
        if not session.trusted and tx.sender_domain in self.blocked_domains:
            self.refused.append(tx.mail_from)
            return Verdict.reject("550 5.7.1 Mail from this domain is not accepted here")
        return None

    def on_rcpt(self, session: SessionInfo, recipient: RecipientInfo) -> Verdict | None:
        # Asked for refused recipients too (recipient.accepted is False):
        # an address harvester waits for every guess.
        if session.notes.get(NO_REVERSE_DNS):
            return Verdict.tarpit(self.tarpit)
        return None

    def on_data(self, session: SessionInfo, message: MessageInfo) -> Any:
        if session.trusted:
            return None
        data = message.data  # in memory for messages up to 256 KiB
        if data is not None:
            return self._judge(session, data)
        # A large message is only in the spool: read its start in a thread,
        # and answer with a Deferred.
        d = self.run_blocking(_read_start, message)
        return d.addCallback(lambda start: self._judge(session, start))

    def _judge(self, session: SessionInfo, data: bytes) -> Verdict:
        tarpitted = "yes" if session.notes.get(NO_REVERSE_DNS) else "no"
        verdict = Verdict.add_header(
            "X-House-Rules", f"client=[{session.client_address}]; iprev={session.iprev}; tarpit={tarpitted}"
        )
        if "[SPAM]" in subject_of(data).upper():
            verdict = verdict.then(Verdict.deliver_to(self.spam_folder))
        return verdict


def _read_start(message: MessageInfo) -> bytes:
    """The first :data:`HEADER_LIMIT` octets of the client's message (blocking)."""
    with message.open() as f:
        return f.read(HEADER_LIMIT)


def subject_of(data: bytes) -> str:
    """The decoded Subject of a message (``""`` when it has none)."""
    end = data.find(b"\r\n\r\n")
    header = data if end < 0 else data[: end + 2]
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(header)
    try:
        return str(parsed.get("subject", ""))
    except Exception:  # a Subject the email package cannot decode
        return ""


def make_service(
    smtp_port: int = 2525,
    imap_port: int = 1143,
    *,
    interface: str = "127.0.0.1",
    domain: str = "example.test",
    users: Mapping[str, str] | None = None,
    blocked_domains: Iterable[str] = (),
    tarpit: float = 5.0,
    trusted_networks: Iterable[str] = (),
    data_dir: str | None = None,
    dns: Any = None,
    reactor: Any = None,
) -> MailServer:
    """
    Build the server with :class:`HouseRules` among its policies (not started).

    Args:
        smtp_port, imap_port: ports to listen on (``0``: any free port; ask
            ``server.address("mta")`` / ``server.address("imap")`` once it
            listens).
        interface: the address to listen on.
        domain: the one local domain.
        users: address -> password.
        blocked_domains, tarpit: see :class:`HouseRules`.
        trusted_networks: networks exempt from every check (``[policy]
            trusted_networks``); none by default.
        data_dir: where the users, the spool and the greylisting table
            live; default a new temporary directory.
        dns: the resolver of the checks (``query(question) ->
            Deferred[Answer]``, e.g. a
            :class:`txmail.resolver.StaticResolver`); default the system's
            name servers.
        reactor: the reactor; default the global one.

    Returns:
        the :class:`~txmail.service.MailServer`; ``server.policies`` holds
        the :class:`HouseRules` instance among the server's own policies.
    """
    settings = Settings.validated(
        hostname=f"mx.{domain}",
        domains=[domain],
        data_dir=data_dir or tempfile.mkdtemp(prefix="txmail-policy-"),
        smtp=[f"tcp:{smtp_port}:interface={interface}"],
        submission=[],
        imap=[f"tcp:{imap_port}:interface={interface}"],
        # Only local mail: no queue runner sending anything out.
        outbound_enabled=False,
        threads=2,
        # The [policy] table of a configuration file, in code.
        policy={"policy": {"trusted_networks": list(trusted_networks)}},
    )
    rules = HouseRules(blocked_domains, tarpit=tarpit)
    server = build_service(settings, reactor=reactor, stores=MemoryProvider(), policies=[rules], dns=dns)
    # Large messages are read in the server's own thread pool.
    rules.run_blocking = server.run_blocking
    for address, password in (users or {}).items():
        server.directory.add_user(address, password)  # type: ignore[attr-defined]
    return server


def main(argv: list[str] | None = None) -> None:
    """Run the example until interrupted."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    parser = argparse.ArgumentParser(description="txmail with a policy hook of its own")
    parser.add_argument("--smtp-port", type=int, default=2525)
    parser.add_argument("--imap-port", type=int, default=1143)
    parser.add_argument("--domain", default="example.test")
    parser.add_argument(
        "--user", action="append", default=[], metavar="ADDRESS:PASSWORD", help="a user (repeatable)"
    )
    parser.add_argument(
        "--block-domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="refuse mail from senders in DOMAIN (repeatable)",
    )
    parser.add_argument(
        "--tarpit", type=float, default=5.0, help="seconds to slow clients without reverse DNS down"
    )
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="NETWORK",
        help="a network exempt from the checks, e.g. 127.0.0.0/8 (repeatable)",
    )
    args = parser.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user) or {f"alice@{args.domain}": "secret"}

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    with tempfile.TemporaryDirectory(prefix="txmail-policy-") as data_dir:
        server = make_service(
            args.smtp_port,
            args.imap_port,
            domain=args.domain,
            users=users,
            blocked_domains=args.block_domain,
            tarpit=args.tarpit,
            trusted_networks=args.trust,
            data_dir=data_dir,
        )
        reactor.callWhenRunning(server.startService)  # type: ignore[attr-defined]
        reactor.addSystemEventTrigger("before", "shutdown", server.stopService)  # type: ignore[attr-defined]
        reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
