"""
The ``txmail`` admin command: users, aliases, the outbound queue, a
configuration check, DKIM keys and the DNS records of a mail domain.

::

    txmail user add [--data-dir DIR] [--config FILE] ADDRESS [--password-stdin]
    txmail user passwd ADDRESS [--password-stdin]
    txmail user del ADDRESS
    txmail user list
    txmail alias add ALIAS TARGET...        (ALIAS "@domain" is a catch-all)
    txmail alias del ALIAS
    txmail alias list
    txmail check-config --config FILE
    txmail db upgrade --config FILE         (create or upgrade the PostgreSQL schema)
    txmail db status --config FILE
    txmail queue list                       (the outbound queue)
    txmail queue show ID
    txmail queue flush                      (every deferred recipient due now)
    txmail queue delete ID
    txmail queue release ID|--all           (held messages: deliver them)
    txmail dkim keygen DOMAIN --selector S --algorithm ed25519|rsa [--bits 2048] [--out PATH] [--force]
    txmail dns-records DOMAIN [--check] [--resolver HOST:PORT ...]
    txmail import mbox|maildir|imap ... --user ADDRESS   (see txmail.migrate.cli)
    txmail export maildir|mbox DIR --user ADDRESS

Every user and alias command takes ``--data-dir`` (default
``./txmail-data``, as the server) and ``--config``; with a config file the
data directory and the local domains come from it (``--data-dir`` still
wins when given).  The directory is ``<data-dir>/users.json``, shared with a
running server, which picks changes up without a restart.  With ``[directory]
backend = "postgresql"`` they work on the ``[postgresql] dsn`` database
instead (:class:`txmail.pg.directory.PostgresDirectory`), whose schema
``txmail db upgrade`` creates or upgrades (``db status`` prints its
version).  ``user add``
creates the user's mail storage through the configured ``[store] backend``
(:func:`txmail.service.make_store_provider`), as the server would on the
first delivery.

The queue commands work on ``<data-dir>/queue`` (with ``[queue] backend =
"postgresql"``, on the ``[postgresql] dsn`` database's queue, which every
node shares) and may run beside the server: ``flush`` makes every deferred
recipient due now by rewriting the
entries' files; a running server sees that at its next queue pass (at most
``[outbound] poll_interval`` seconds, 30 by default) and tries them then.
``delete`` removes an entry for good (no bounce is sent); an attempt already
in flight for it finishes but is not recorded.  A message a policy or
milter quarantined waits with its recipients ``held`` (Postfix's hold
queue) until ``release`` lets them go, at the next queue pass.

``dkim keygen`` writes a new private key (mode 0600, never over an existing
file unless ``--force``) to ``<data-dir>/dkim/<domain>.<selector>.key`` or
``--out``, and prints the TXT record to publish and the ``[[dkim.keys]]``
entry to add to the configuration.  RSA keys have 1024 to 4096 bits (RFC
8301 section 3.2), 2048 by default; Ed25519 keys (RFC 8463) are shorter but
not every receiver checks them yet, so sign with an RSA key as well.

``dns-records`` prints, as zone-file lines with a comment each, the records
a domain needs for mail to reach this server and to authenticate (MX, the
server's address, SPF, DKIM for each configured key, DMARC, reverse DNS;
see :mod:`txmail.dnsrecords`).  With ``--check`` it asks the DNS for each
through txmail's own resolver (the ``[outbound] resolvers``, ``--resolver``,
else the system's) and prints OK, MISSING, WRONG or COULD NOT CHECK per
record; the exit status is 1 unless every record is OK.

Errors go to stderr as one clear line and the exit status is 1; usage errors
exit with 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from txmail.config import Settings, load_config, parse_host_port
from txmail.directory import FileDirectory
from txmail.dnsrecords import (
    CheckStatus,
    DKIMPublication,
    MailDomain,
    check_domain,
    first_questions,
    format_finding,
    is_domain_name,
    summary,
    zone_line,
    zone_text,
)
from txmail.errors import ConfigError, DatabaseError, DirectoryError, QueueError
from txmail.interfaces import IDirectory
from txmail.model import DeliveryState

if TYPE_CHECKING:
    from txmail.pg.directory import PostgresDirectory

__all__ = ["CLIError", "build_parser", "check_records", "main"]

USERS_FILE = "users.json"


class CLIError(Exception):
    """An error to report on stderr (exit status 1)."""


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return load_config(args.config, {"data_dir": args.data_dir})
    except ConfigError as e:
        raise CLIError(f"config error: {e}") from None


def _directory(args: argparse.Namespace) -> tuple[FileDirectory | PostgresDirectory, Settings]:
    """
    The configured directory (``[directory] backend``) and the settings.
    The PostgreSQL directory's methods return Deferreds that have fired
    (its database is not started: queries run inline); :func:`_done`
    unwraps them.
    """
    settings = _settings(args)
    if settings.directory_backend == "postgresql":
        from txmail.pg.directory import PostgresDirectory

        pg_directory = PostgresDirectory(
            _database(settings), local_domains=settings.domains, primary_domain=settings.primary_domain
        )
        pg_directory.check_schema()
        return pg_directory, settings
    try:
        directory = FileDirectory(
            os.path.join(settings.data_dir, USERS_FILE),
            local_domains=settings.domains,
            primary_domain=settings.primary_domain,
        )
    except DirectoryError as e:
        raise CLIError(str(e)) from None
    return directory, settings


def _database(settings: Any) -> Any:
    """The ``[postgresql]`` database of *settings*, not started (queries run inline)."""
    try:
        from txmail.pg.db import database_from_settings

        return database_from_settings(settings)
    except ConfigError as e:
        raise CLIError(f"config error: {e}") from None


def _done(result: Any) -> Any:
    """*result*, or the result of a Deferred that has fired (errors raised)."""
    if not isinstance(result, defer.Deferred):
        return result
    results: list[Any] = []
    result.addBoth(results.append)
    if not results:  # pragma: no cover - unstarted databases answer inline
        raise CLIError("the directory did not answer")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def _db_upgrade(args: argparse.Namespace) -> None:
    from txmail.pg.schema import upgrade

    before, after = _database(_settings(args)).run_sync(upgrade)
    if before == after:
        _out(f"the PostgreSQL schema is up to date (version {after})")
    else:
        _out(f"upgraded the PostgreSQL schema from version {before} to {after}")


def _db_status(args: argparse.Namespace) -> int:
    from txmail.pg.schema import LATEST_VERSION, current_version

    version = _database(_settings(args)).run_sync(current_version)
    if version < LATEST_VERSION:
        _out(f"schema version {version}; this txmail needs {LATEST_VERSION}: run `txmail db upgrade`")
        return 1
    _out(f"schema version {version} (this txmail needs {LATEST_VERSION}): up to date")
    return 0


def _out(text: str) -> None:
    print(text, file=sys.stdout)


def _read_password(args: argparse.Namespace) -> str:
    """The new password: one line of stdin, or typed twice at a prompt."""
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    else:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Repeat password: ")
        except (EOFError, KeyboardInterrupt):
            raise CLIError("no password given") from None
        if password != again:
            raise CLIError("passwords do not match")
    if not password:
        raise CLIError("empty password")
    return password


def _create_storage(settings: Any, address: str) -> None:
    """
    Create the user's mailbox storage, as the server would on first
    delivery, through the configured backend (``[store] backend``).
    """
    try:
        from txmail.service import make_store_provider

        provider = make_store_provider(settings)
    except ImportError as e:
        raise CLIError(f"user {address} added, but mail storage is not available: {e}") from None
    # The backends' file work runs inline here: the Deferred has fired.
    results: list[Any] = []
    provider.store_for(address).addBoth(results.append)
    if not results:  # pragma: no cover - the configured backends answer inline
        raise CLIError(f"user {address} added, but creating its mail storage did not complete")
    if isinstance(results[0], Failure):
        raise CLIError(
            f"user {address} added, but creating its mail storage failed: {results[0].getErrorMessage()}"
        )


def _user_add(args: argparse.Namespace) -> None:
    directory, settings = _directory(args)
    password = _read_password(args)
    try:
        address = _done(directory.add_user(args.address, password))
    except ValueError as e:  # InvalidAddress or a password SASLprep refuses
        raise CLIError(_value_error_text(e)) from None
    _create_storage(settings, address)
    _out(f"added user {address}")


def _user_passwd(args: argparse.Namespace) -> None:
    directory, _ = _directory(args)
    _check_user(directory, args.address)
    password = _read_password(args)
    try:
        address = _done(directory.set_password(args.address, password))
    except ValueError as e:
        raise CLIError(_value_error_text(e)) from None
    _out(f"changed the password of {address}")


def _user_del(args: argparse.Namespace) -> None:
    directory, settings = _directory(args)
    address = _done(directory.delete_user(args.address))
    if settings.store_backend == "maildir":
        where = f"under {os.path.join(settings.data_dir, 'mail')}"
    else:
        where = f"in the {settings.store_backend} store"
    _out(f"deleted user {address} (their mail stays {where})")


def _user_list(args: argparse.Namespace) -> None:
    directory, _ = _directory(args)
    for user in _done(directory.list_users()):
        _out(user)


def _alias_add(args: argparse.Namespace) -> None:
    directory, _ = _directory(args)
    try:
        alias = _done(directory.add_alias(args.alias, args.targets))
    except ValueError as e:
        raise CLIError(_value_error_text(e, "")) from None
    _out(f"added alias {alias} -> {', '.join(_done(directory.list_aliases())[alias])}")


def _alias_del(args: argparse.Namespace) -> None:
    directory, _ = _directory(args)
    alias = _done(directory.delete_alias(args.alias))
    _out(f"deleted alias {alias}")


def _alias_list(args: argparse.Namespace) -> None:
    directory, _ = _directory(args)
    for alias, targets in _done(directory.list_aliases()).items():
        _out(f"{alias} -> {', '.join(targets)}")


def _reload(args: argparse.Namespace) -> None:
    """SIGHUP to the server whose process id is in the pidfile (see :mod:`txmail.lifecycle`)."""
    import signal

    try:
        with open(args.pidfile, encoding="ascii") as f:
            pid = int(f.read().strip())
    except FileNotFoundError:
        raise CLIError(f"no pidfile {args.pidfile!r}: is the server running (twistd --pidfile)?") from None
    except ValueError:
        raise CLIError(f"pidfile {args.pidfile!r} does not hold a process id") from None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CLIError(f"no process {pid} (from {args.pidfile!r}): the server is not running") from None
    _out(f"sent SIGHUP to {pid}; the server's log says what changed and what needs a restart")


def _check_config(args: argparse.Namespace) -> None:
    directory, settings = _directory(args)
    policy = settings.policy
    keys, forwarding = _check_policy(settings)
    _out("OK")
    _out(f"  hostname:       {settings.hostname}")
    _out(f"  data dir:       {settings.data_dir}")
    _out(f"  mail store:     {settings.store_backend}")
    _out(f"  domains:        {', '.join(settings.domains)} (primary {settings.primary_domain})")
    _out(f"  directory:      {settings.directory_backend}")
    _out(f"  users:          {len(_done(directory.list_users()))}")
    _out(f"  plaintext auth: {settings.plaintext_auth}")
    _out(f"  TLS:            {'certificate ' + settings.tls_cert if settings.tls_cert else 'disabled'}")
    _out(f"  smtp:           {', '.join(settings.smtp) or '-'}")
    _out(f"  submission:     {', '.join(settings.submission) or '-'}")
    if settings.proxy_protocol:
        senders = ", ".join(settings.proxy_trusted) or "UNIX sockets only"
        _out(f"  PROXY protocol: {', '.join(settings.proxy_protocol)} (from {senders})")
    if policy.enabled:
        checks = [n for n in ("iprev", "spf", "dkim", "arc", "dmarc") if getattr(policy, n)]
        if policy.dnsbl or policy.dnswl or policy.domain_blocklists:
            checks.append("dns lists")
        if policy.defaults.greylisting or any(d.greylisting for _, d in policy.domains):
            checks.append("greylisting")
        _out(
            f"  inbound checks: {', '.join(checks) or '-'} (trusted: {', '.join(policy.trusted_networks) or '-'})"
        )
    else:
        _out("  inbound checks: off")
    _out(f"  dkim signing:   {', '.join(f'{k.selector}._domainkey.{k.domain}' for k in keys) or '-'}")
    if forwarding is not None:
        parts = (["srs"] if forwarding.srs is not None else []) + (
            ["arc seal"] if forwarding.seal_key else []
        )
        _out(f"  forwarding:     {', '.join(parts)}")


def _check_policy(settings: Any) -> tuple[list[Any], Any]:
    """Load what the server would load of the policy settings (keys); a CLIError if it fails."""
    from txmail.policy.builtin import build_forwarding, signing_keys

    policy = settings.policy
    try:
        keys = signing_keys(policy)
        forwarding = build_forwarding(
            policy,
            keys=keys,
            primary_domain=settings.primary_domain,
            authserv_id=policy.authserv_id or settings.hostname,
            is_local=lambda domain: domain in settings.domains,
            run_blocking=lambda fn, *a: fn(*a),
            clock=None,
        )
    except ConfigError as e:
        raise CLIError(str(e)) from None
    return keys, forwarding


def _queue(args: argparse.Namespace) -> Any:
    """The configured queue (``[queue] backend``); its Deferreds have fired when returned."""
    from txmail.delivery.queue import SpoolQueue

    settings = _settings(args)
    if settings.queue_backend == "postgresql":
        from txmail.pg.queue import PostgresQueue

        pg_queue = PostgresQueue(_database(settings))
        pg_queue.check_schema()
        return pg_queue
    path = os.path.join(settings.data_dir, "queue")
    if not os.path.isdir(path):
        raise CLIError(f"no queue at {path}")
    return SpoolQueue(path)


def _now(d: Any) -> Any:
    """The result of a Deferred that has fired (the queue works inline here)."""
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:  # pragma: no cover - inline queues always fire
        raise CLIError("queue operation did not complete")
    result = results[0]
    if hasattr(result, "raiseException"):
        if result.check(QueueError):
            raise CLIError(str(result.value))
        result.raiseException()
    return result


def _when(timestamp: Any) -> str:
    import time

    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(timestamp)))


def _queue_list(args: argparse.Namespace) -> None:
    entries = _now(_queue(args).list_entries())
    for entry in entries:
        counts: dict[str, int] = {}
        for st in entry.recipients.values():
            counts[st.state] = counts.get(st.state, 0) + 1
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        _out(
            f"{entry.queue_id}  {_when(entry.created)}  {entry.size:>9}  <{entry.envelope.mail_from}>  {states}"
        )
    _out(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")


def _queue_show(args: argparse.Namespace) -> None:
    entry = _now(_queue(args).get_entry(args.queue_id))
    env = entry.envelope
    _out(f"queue id:  {entry.queue_id}")
    _out(f"created:   {_when(entry.created)}")
    _out(f"size:      {entry.size}")
    _out(f"sender:    <{env.mail_from}>")
    if env.authenticated_user:
        _out(f"auth user: {env.authenticated_user}")
    if env.hold:
        _out(f"held for:  {env.hold}")
    if env.mail_params:
        _out("params:    " + " ".join(f"{k}={v}" if v is not None else k for k, v in env.mail_params.items()))
    for rcpt, st in entry.recipients.items():
        _out(f"<{rcpt}>: {st.state}, {st.attempts} attempt(s)")
        if st.state is DeliveryState.DEFERRED:
            _out(f"    next attempt: {_when(st.next_attempt)}")
        for value, label in ((st.host, "last host"), (st.reply, "reply"), (st.last_error, "last error")):
            if value:
                _out(f"    {label}: {value}")


def _queue_flush(args: argparse.Namespace) -> None:
    count = _now(_queue(args).flush())
    _out(f"{count} deferred recipient(s) due now; a running server tries them at its next queue pass")


def _queue_release(args: argparse.Namespace) -> None:
    if (args.queue_id is None) == (not args.all):
        raise CLIError("give a queue ID or --all")
    count = _now(_queue(args).release(args.queue_id))
    _out(f"{count} held recipient(s) released; a running server tries them at its next queue pass")


def _queue_delete(args: argparse.Namespace) -> None:
    _now(_queue(args).delete_entry(args.queue_id))
    _out(f"deleted {args.queue_id}")


# --- dkim keygen and dns-records ------------------------------------------------

#: ``--algorithm`` -> the DKIM algorithm name (RFC 6376 section 3.3, RFC 8463).
DKIM_ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}
#: RFC 8301 section 3.2: "Verifiers MUST be able to validate signatures with
#: keys ranging from 1024 bits to 4096 bits".
MAX_RSA_BITS = 4096
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def _warn(text: str) -> None:
    print(f"txmail: {text}", file=sys.stderr)


def _domain_arg(text: str) -> str:
    """A DOMAIN argument as a lower-case A-label name without the final dot."""
    name = text.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise CLIError(f"{text!r} is not a domain name") from None
    if not is_domain_name(name):
        raise CLIError(
            f"{text!r} is not a domain name (letters, digits and hyphens, labels separated by dots)"
        )
    return name


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _not_local(settings: Any, domain: str) -> None:
    if domain not in settings.domains:
        _warn(
            f"note: {domain} is not one of the configured domains ({', '.join(settings.domains)}); "
            "add it to [server] domains to receive its mail"
        )


def _dkim_keygen(args: argparse.Namespace) -> None:
    from txmail.policy.dkim import MIN_RSA_BITS, generate_key, write_key

    domain = _domain_arg(args.domain)
    selector = args.selector
    if not _SELECTOR.fullmatch(selector):
        raise CLIError(f"selector {selector!r} is not a DNS label (letters, digits, '.', '-', '_')")
    algorithm = DKIM_ALGORITHMS[args.algorithm]
    if algorithm == "ed25519-sha256" and args.bits is not None:
        raise CLIError("--bits is for RSA keys; Ed25519 keys always have 256 bits")
    bits = 2048 if args.bits is None else args.bits
    if algorithm == "rsa-sha256" and bits < MIN_RSA_BITS:
        raise CLIError(
            f"RSA keys need at least {MIN_RSA_BITS} bits: RFC 8301 section 3.2 has verifiers ignore "
            "signatures made with shorter keys (2048 recommended)"
        )
    if algorithm == "rsa-sha256" and bits > MAX_RSA_BITS:
        raise CLIError(
            f"RSA keys of more than {MAX_RSA_BITS} bits: RFC 8301 section 3.2 asks verifiers to handle "
            f"up to {MAX_RSA_BITS} only (2048 recommended)"
        )
    settings = _settings(args)
    if args.out:
        path = os.path.abspath(args.out)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise CLIError(f"cannot write {path}: {directory} is not a directory")
    else:
        directory = os.path.abspath(settings.path("dkim"))
        path = os.path.join(directory, f"{domain}.{selector}.key")
        try:
            # 0700: the directory of private keys; makedirs applies the mode
            # to the last directory only, the data directory keeps the default.
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as e:
            raise CLIError(f"cannot create {directory}: {e.strerror or e}") from None
    exists = f"{path} exists: not replacing a key whose record may be published (--force replaces it)"
    if os.path.lexists(path) and not args.force:
        raise CLIError(exists)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write {path}: {directory} is not writable")
    content, record = generate_key(algorithm, bits)
    try:
        write_key(path, content, overwrite=args.force)
    except FileExistsError:
        raise CLIError(exists) from None
    except OSError as e:
        raise CLIError(f"cannot write {path}: {e.strerror or e}") from None
    if args.config:
        _not_local(settings, domain)
    size = f"{bits}-bit RSA" if algorithm == "rsa-sha256" else "Ed25519"
    _out(f"Wrote a new {size} private key to {path} (mode 0600).")
    _out("")
    _out(f"Publish this TXT record in the {domain} zone:")
    _out("")
    _out(zone_line(f"{selector}._domainkey.{domain}", "TXT", record))
    _out("")
    _out("Add this to the configuration file:")
    _out("")
    _out("[[dkim.keys]]")
    _out(f"domain = {_toml_string(domain)}")
    _out(f"selector = {_toml_string(selector)}")
    _out(f"key = {_toml_string(path)}")
    _out(
        "sign = true   # false: publish the record first; true once "
        f"`txmail dns-records {domain} --check` finds it"
    )
    if algorithm == "ed25519-sha256":
        _out("")
        _out("Not every receiver checks Ed25519 signatures yet (RFC 8463): sign with an RSA key too.")


def _mail_domain(args: argparse.Namespace, settings: Any) -> tuple[MailDomain, int]:
    """What ``dns-records`` works from, and 1 if a key file could not be read (said on stderr)."""
    domain = _domain_arg(args.domain)
    hostname = settings.hostname.strip().rstrip(".").lower()
    if "." not in hostname:
        _warn(
            f"warning: the hostname {hostname!r} is not a fully-qualified domain name: "
            "set [server] hostname to the name receivers should see"
        )
    _not_local(settings, domain)
    status = 0
    keys = []
    for key in settings.policy.dkim_keys:
        if key.domain != domain:
            continue
        signing = key.sign and settings.policy.dkim_sign
        from txmail.policy.dkim import load_signing_key, txt_record_for

        try:
            record = txt_record_for(load_signing_key(key.key, domain, key.selector))
        except OSError as e:
            error = f"cannot read {key.key}: {e.strerror or e}"
        except ValueError as e:
            error = f"{key.key}: {e}"
        else:
            keys.append(DKIMPublication(key.selector, record, signing))
            continue
        _warn(f"error: DKIM key {key.selector} of {domain}: {error}")
        keys.append(DKIMPublication(key.selector, None, signing, error))
        status = 1
    from txmail.autoconfig import client_offer, https_port

    clients = client_offer(settings)
    mail = MailDomain(
        domain,
        hostname,
        tuple(keys),
        settings.smarthost,
        clients=clients,
        autoconfig_port=https_port(settings),
        mta_sts=_mta_sts_policy(settings),
    )
    return mail, status


def _mta_sts_policy(settings: Any) -> str | None:
    """The MTA-STS policy text the ``[mta_sts]`` settings serve, or ``None``."""
    if not settings.mta_sts_mode:
        return None
    from txmail.delivery.mtasts import policy_text

    return policy_text(
        settings.mta_sts_mode, settings.mta_sts_mx or (settings.hostname,), settings.mta_sts_max_age
    )


def check_records(mail: MailDomain, resolver: Any) -> Any:
    """
    Check the published records of *mail* through *resolver* (a
    :class:`txmail.resolver.Resolver` on the running reactor) and print one
    finding per record, then a summary line.

    Returns:
        A Deferred that fires with the exit status: 0 when every record is
        OK, else 1 (missing, wrong, or a DNS failure).
    """
    from twisted.internet import defer

    from txmail.resolver import drive

    def report(findings: list[Any]) -> int:
        _out(f"Checking the DNS records of {mail.domain} for {mail.hostname}:")
        for finding in findings:
            for line in format_finding(finding):
                _out(line)
        _out(summary(findings))
        return 0 if all(f.status is CheckStatus.OK for f in findings) else 1

    # Ask the independent questions at once: the resolver keeps the answers
    # (failures too, for its error_ttl), so an unreachable server costs one
    # timeout rather than one per record.
    asked = defer.gatherResults([resolver.query(q) for q in first_questions(mail)])
    asked.addCallback(lambda _: drive(check_domain(mail), resolver))
    return asked.addCallback(report)


def _react(main: Callable[[Any], Any]) -> int:
    """Run *main(reactor)* (a Deferred of an exit status) in the reactor; the status."""
    from twisted.internet import task

    results: list[int] = []

    def run(reactor: Any) -> Any:
        return main(reactor).addCallback(results.append)

    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            return e.code if isinstance(e.code, int) else 1
    return results[0] if results else 1


def _dns_records(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        servers = [parse_host_port(s, 53) for s in (args.resolver or settings.resolvers)]
    except ConfigError as e:
        raise CLIError(f"--resolver: {e}") from None
    mail, status = _mail_domain(args, settings)
    if not args.check:
        sys.stdout.write(zone_text(mail))
        return status

    def check(reactor: Any) -> Any:
        from txmail.resolver import Resolver

        # Failed answers are kept for the whole run (see check_records).
        return check_records(mail, Resolver(servers or None, reactor=reactor, timeout=(2, 4), error_ttl=300))

    return _react(check) or status


def _check_user(directory: IDirectory, address: str) -> None:
    """Fail before prompting for a password when the user does not exist."""
    results: list[Any] = []
    directory.canonical_user(address).addBoth(results.append)
    if not results or results[0] is None or not isinstance(results[0], str):
        raise CLIError(f"no user {address}")


def _value_error_text(error: ValueError, what: str = "password") -> str:
    if isinstance(error, DirectoryError):
        return str(error)
    return f"invalid {what}: {error}" if what else str(error)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``txmail`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="data directory (users.json, mail/); default ./txmail-data or the config's",
    )
    common.add_argument("-c", "--config", metavar="FILE", default=None, help="TOML configuration file")

    parser = argparse.ArgumentParser(
        prog="txmail",
        description="txmail administration: users, aliases, the outbound queue, DKIM keys, DNS records",
        epilog="txmail COMMAND --help (or txmail COMMAND ACTION --help) describes each command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = user.add_parser("add", parents=[common], help="add a user and create their mailbox")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p.set_defaults(func=_user_add)
    p = user.add_parser("passwd", parents=[common], help="change a user's password")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p.set_defaults(func=_user_passwd)
    p = user.add_parser("del", parents=[common], help="delete a user (their mail is kept)")
    p.add_argument("address")
    p.set_defaults(func=_user_del)
    p = user.add_parser("list", parents=[common], help="list users")
    p.set_defaults(func=_user_list)

    alias = commands.add_parser("alias", help="manage aliases").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = alias.add_parser("add", parents=[common], help="add an alias (@domain: catch-all)")
    p.add_argument("alias")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    p.set_defaults(func=_alias_add)
    p = alias.add_parser("del", parents=[common], help="delete an alias")
    p.add_argument("alias")
    p.set_defaults(func=_alias_del)
    p = alias.add_parser("list", parents=[common], help="list aliases")
    p.set_defaults(func=_alias_list)

    queue = commands.add_parser("queue", help="inspect and steer the outbound queue").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = queue.add_parser("list", parents=[common], help="list queued messages")
    p.set_defaults(func=_queue_list)
    p = queue.add_parser("show", parents=[common], help="show a queued message and its recipients")
    p.add_argument("queue_id", metavar="ID")
    p.set_defaults(func=_queue_show)
    p = queue.add_parser(
        "flush",
        parents=[common],
        help="make every deferred recipient due now (a running server picks them up at its next poll)",
    )
    p.set_defaults(func=_queue_flush)
    p = queue.add_parser("delete", parents=[common], help="delete a queued message (no bounce)")
    p.add_argument("queue_id", metavar="ID")
    p.set_defaults(func=_queue_delete)
    p = queue.add_parser(
        "release", parents=[common], help="release a held (quarantined) message, or every one with --all"
    )
    p.add_argument("queue_id", metavar="ID", nargs="?")
    p.add_argument("--all", action="store_true", help="release every held message")
    p.set_defaults(func=_queue_release)

    db = commands.add_parser("db", help="the PostgreSQL schema ([postgresql] dsn)").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = db.add_parser(
        "upgrade",
        parents=[common],
        help="create or upgrade the schema (safe to repeat, and to run on several nodes at once)",
    )
    p.set_defaults(func=_db_upgrade)
    p = db.add_parser(
        "status", parents=[common], help="print the schema version (exit 1 if it needs an upgrade)"
    )
    p.set_defaults(func=_db_status)

    p = commands.add_parser(
        "reload", help="make the running server reload its configuration, certificates and users (SIGHUP)"
    )
    p.add_argument("--pidfile", default="twistd.pid", help="twistd's pidfile (default twistd.pid)")
    p.set_defaults(func=_reload)

    p = commands.add_parser("check-config", help="validate a configuration file")
    p.add_argument("--config", metavar="FILE", required=True, help="TOML configuration file")
    p.set_defaults(func=_check_config, data_dir=None)

    dkim = commands.add_parser("dkim", help="make DKIM signing keys").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = dkim.add_parser(
        "keygen",
        parents=[common],
        help="make a DKIM key; print its DNS record and configuration entry",
        description=(
            "Write a new DKIM private key (mode 0600) to <data-dir>/dkim/DOMAIN.SELECTOR.key "
            "or --out, and print the TXT record to publish at SELECTOR._domainkey.DOMAIN and the "
            "[[dkim.keys]] entry to add to the configuration. An existing file is never replaced "
            "without --force."
        ),
    )
    p.add_argument("domain", metavar="DOMAIN", help="the signing domain (d=)")
    p.add_argument(
        "--selector", required=True, metavar="S", help="the selector (s=), a DNS label such as 2026a"
    )
    p.add_argument(
        "--algorithm",
        required=True,
        choices=sorted(DKIM_ALGORITHMS),
        help="rsa (checked by every receiver) or ed25519 (RFC 8463; sign with an RSA key too)",
    )
    p.add_argument(
        "--bits",
        type=int,
        default=None,
        help=f"RSA key size, 1024 to {MAX_RSA_BITS} (RFC 8301); default 2048",
    )
    p.add_argument("--out", metavar="PATH", default=None, help="where to write the key")
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(func=_dkim_keygen)

    p = commands.add_parser(
        "dns-records",
        parents=[common],
        help="print (or --check) the DNS records a mail domain needs",
        description=(
            "Print the records DOMAIN needs for mail to reach this server and to authenticate: "
            "MX, the hostname's address, SPF, DKIM (one per configured key), DMARC and reverse "
            "DNS, as zone-file lines with comments. With --check, look each up and say whether "
            "it is OK, MISSING, WRONG, or could not be checked; the exit status is 1 unless all "
            "are OK."
        ),
    )
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--check", action="store_true", help="look the records up and compare")
    p.add_argument(
        "--resolver",
        action="append",
        metavar="HOST:PORT",
        default=None,
        help="DNS server to ask (repeatable); default the config's [outbound] resolvers, else the system's",
    )
    p.set_defaults(func=_dns_records)

    from txmail.migrate.cli import add_commands

    add_commands(commands, common)  # import, export
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the ``txmail`` command with *argv* (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 on an error, 2 on a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        status = func(args)
    except CLIError as e:
        print(f"txmail: error: {e}", file=sys.stderr)
        return 1
    except DirectoryError as e:  # NoSuchUser, UserExists, InvalidAddress, unreadable file
        print(f"txmail: error: {e}", file=sys.stderr)
        return 1
    except DatabaseError as e:  # PostgreSQL unreachable, or its schema too old
        print(f"txmail: error: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:  # PostgreSQL configured without psycopg installed
        print(f"txmail: error: config error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"txmail: error: {e}", file=sys.stderr)
        return 1
    except ImportError as e:  # an optional extra (txmail[policy]) is missing; its message says which
        print(f"txmail: error: {e}", file=sys.stderr)
        return 1
    return status or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
