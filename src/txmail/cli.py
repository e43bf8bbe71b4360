"""
The ``txmail`` admin command: users, aliases, the outbound queue and a configuration check.

::

    txmail user add [--data-dir DIR] [--config FILE] ADDRESS [--password-stdin]
    txmail user passwd ADDRESS [--password-stdin]
    txmail user del ADDRESS
    txmail user list
    txmail alias add ALIAS TARGET...        (ALIAS "@domain" is a catch-all)
    txmail alias del ALIAS
    txmail alias list
    txmail check-config --config FILE
    txmail queue list                       (the outbound queue)
    txmail queue show ID
    txmail queue flush                      (every deferred recipient due now)
    txmail queue delete ID

Every user and alias command takes ``--data-dir`` (default
``./txmail-data``, as the server) and ``--config``; with a config file the
data directory and the local domains come from it (``--data-dir`` still
wins when given).  The directory is ``<data-dir>/users.json``, shared with a
running server, which picks changes up without a restart.

The queue commands work on ``<data-dir>/queue`` and may run beside the
server: ``flush`` makes every deferred recipient due now by rewriting the
entries' files; a running server sees that at its next queue pass (at most
``[outbound] poll_interval`` seconds, 30 by default) and tries them then.
``delete`` removes an entry for good (no bounce is sent); an attempt already
in flight for it finishes but is not recorded.

Errors go to stderr as one clear line and the exit status is 1; usage errors
exit with 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from txmail.config import load_config
from txmail.directory import FileDirectory
from txmail.errors import ConfigError, DirectoryError, QueueError

__all__ = ["CLIError", "build_parser", "main"]

USERS_FILE = "users.json"


class CLIError(Exception):
    """An error to report on stderr (exit status 1)."""


def _settings(args: argparse.Namespace) -> Any:
    try:
        return load_config(args.config, {"data_dir": args.data_dir})
    except ConfigError as e:
        raise CLIError(f"config error: {e}") from None


def _directory(args: argparse.Namespace) -> tuple[FileDirectory, Any]:
    settings = _settings(args)
    try:
        directory = FileDirectory(
            os.path.join(settings.data_dir, USERS_FILE),
            local_domains=settings.domains,
            primary_domain=settings.primary_domain,
        )
    except DirectoryError as e:
        raise CLIError(str(e)) from None
    return directory, settings


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


def _create_storage(data_dir: str, address: str) -> None:
    """Create the user's mailbox storage, as the server would on first delivery."""
    try:
        from txmail.store.maildir import MaildirProvider
    except ImportError as e:
        raise CLIError(f"user {address} added, but mail storage is not available: {e}") from None
    failures: list[Any] = []
    try:
        result = MaildirProvider(os.path.join(data_dir, "mail")).store_for(address)
        if hasattr(result, "addErrback"):
            # A provider may answer with a Deferred; ours fire at once here.
            result.addErrback(failures.append)
    except Exception as e:
        raise CLIError(f"user {address} added, but creating its mail storage failed: {e}") from None
    if failures:
        raise CLIError(
            f"user {address} added, but creating its mail storage failed: {failures[0].getErrorMessage()}"
        )


def _user_add(args: argparse.Namespace) -> None:
    directory, settings = _directory(args)
    password = _read_password(args)
    try:
        address = directory.add_user(args.address, password)
    except ValueError as e:  # InvalidAddress or a password SASLprep refuses
        raise CLIError(_value_error_text(e)) from None
    _create_storage(settings.data_dir, address)
    _out(f"added user {address}")


def _user_passwd(args: argparse.Namespace) -> None:
    directory, _ = _directory(args)
    _check_user(directory, args.address)
    password = _read_password(args)
    try:
        address = directory.set_password(args.address, password)
    except ValueError as e:
        raise CLIError(_value_error_text(e)) from None
    _out(f"changed the password of {address}")


def _user_del(args: argparse.Namespace) -> None:
    directory, settings = _directory(args)
    address = directory.delete_user(args.address)
    _out(f"deleted user {address} (their mail stays under {os.path.join(settings.data_dir, 'mail')})")


def _user_list(args: argparse.Namespace) -> None:
    directory, _ = _directory(args)
    for user in directory.list_users():
        _out(user)


def _alias_add(args: argparse.Namespace) -> None:
    directory, _ = _directory(args)
    try:
        alias = directory.add_alias(args.alias, args.targets)
    except ValueError as e:
        raise CLIError(_value_error_text(e, "")) from None
    _out(f"added alias {alias} -> {', '.join(directory.list_aliases()[alias])}")


def _alias_del(args: argparse.Namespace) -> None:
    directory, _ = _directory(args)
    alias = directory.delete_alias(args.alias)
    _out(f"deleted alias {alias}")


def _alias_list(args: argparse.Namespace) -> None:
    directory, _ = _directory(args)
    for alias, targets in directory.list_aliases().items():
        _out(f"{alias} -> {', '.join(targets)}")


def _check_config(args: argparse.Namespace) -> None:
    settings = _settings(args)
    try:
        directory = FileDirectory(
            os.path.join(settings.data_dir, USERS_FILE),
            local_domains=settings.domains,
            primary_domain=settings.primary_domain,
        )
    except DirectoryError as e:
        raise CLIError(str(e)) from None
    _out("OK")
    _out(f"  hostname:       {settings.hostname}")
    _out(f"  data dir:       {settings.data_dir}")
    _out(f"  domains:        {', '.join(settings.domains)} (primary {settings.primary_domain})")
    _out(f"  users:          {len(directory.list_users())}")
    _out(f"  plaintext auth: {settings.plaintext_auth}")
    _out(f"  TLS:            {'certificate ' + settings.tls_cert if settings.tls_cert else 'disabled'}")
    _out(f"  smtp:           {', '.join(settings.smtp) or '-'}")
    _out(f"  submission:     {', '.join(settings.submission) or '-'}")


def _queue(args: argparse.Namespace) -> Any:
    from txmail.delivery.queue import SpoolQueue

    settings = _settings(args)
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
        for fields in entry.recipients.values():
            counts[fields.get("state", "?")] = counts.get(fields.get("state", "?"), 0) + 1
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
    if env.mail_params:
        _out("params:    " + " ".join(f"{k}={v}" if v is not None else k for k, v in env.mail_params.items()))
    for rcpt, fields in entry.recipients.items():
        _out(f"<{rcpt}>: {fields.get('state')}, {fields.get('attempts', 0)} attempt(s)")
        if fields.get("state") == "deferred":
            _out(f"    next attempt: {_when(fields.get('next_attempt'))}")
        for key, label in (("host", "last host"), ("reply", "reply"), ("last_error", "last error")):
            if fields.get(key):
                _out(f"    {label}: {fields[key]}")


def _queue_flush(args: argparse.Namespace) -> None:
    count = _now(_queue(args).flush())
    _out(f"{count} deferred recipient(s) due now; a running server tries them at its next queue pass")


def _queue_delete(args: argparse.Namespace) -> None:
    _now(_queue(args).delete_entry(args.queue_id))
    _out(f"deleted {args.queue_id}")


def _check_user(directory: FileDirectory, address: str) -> None:
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
    common.add_argument("--config", metavar="FILE", default=None, help="TOML configuration file")

    parser = argparse.ArgumentParser(prog="txmail", description="txmail administration")
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

    p = commands.add_parser("check-config", help="validate a configuration file")
    p.add_argument("--config", metavar="FILE", required=True, help="TOML configuration file")
    p.set_defaults(func=_check_config, data_dir=None)
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
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except CLIError as e:
        print(f"txmail: error: {e}", file=sys.stderr)
        return 1
    except DirectoryError as e:  # NoSuchUser, UserExists, InvalidAddress, unreadable file
        print(f"txmail: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"txmail: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
