"""
The ``txmail import`` and ``txmail export`` commands (added to the parser of
:mod:`txmail.cli`)::

    txmail import mbox PATH --user ADDRESS [--folder NAME]
    txmail import maildir DIR --user ADDRESS
    txmail import imap HOST[:PORT] --user ADDRESS [--login NAME] [--password-stdin | --password-file FILE]
                       [--security tls|starttls|none] [--insecure] [--cafile FILE]
                       [--state FILE] [--max-messages N]
    txmail export maildir DIR --user ADDRESS
    txmail export mbox DIR --user ADDRESS

Each works through the configured ``[store] backend`` on the user's store
(the user must exist in the directory), prints a line per folder and then
one summary line (folders, messages, bytes, skipped); the problems met (a
file that is not a message...) go to standard error, and the exit status is
then 1.  An error that stops the work (an unknown user, a server that cannot
be reached, a refused login) is one line on standard error, status 1.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from txmail.config import parse_host_port
from txmail.errors import ConfigError
from txmail.migrate._store import MigrationError, Summary, wait

__all__ = ["add_commands"]


def _cli() -> Any:
    from txmail import cli

    return cli


def _store(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The settings, the user's store through the configured backend, and the canonical user."""
    cli = _cli()
    directory, settings = cli._directory(args)
    user = cli._done(directory.canonical_user(args.user))
    if not isinstance(user, str):
        raise cli.CLIError(f"no user {args.user}")
    from txmail.service import make_store_provider

    provider = make_store_provider(settings)
    try:
        store = wait(provider.store_for(user))
    except ValueError as e:
        raise cli.CLIError(f"cannot open the mail store of {user}: {e}") from None
    return settings, store, user


def _finish(summary: Summary, verb: str) -> int:
    cli = _cli()
    for problem in summary.problems:
        print(f"txmail: warning: {problem}", file=sys.stderr)
    cli._out(summary.line(verb))
    return 1 if summary.skipped else 0


def _run(args: argparse.Namespace, work: Any, verb: str) -> int:
    cli = _cli()
    try:
        summary = work()
    except MigrationError as e:
        raise cli.CLIError(str(e)) from None
    except KeyboardInterrupt:
        # What was stored is kept; an IMAP import's state has recorded it.
        raise cli.CLIError(
            "interrupted: what was copied is kept (an IMAP import goes on when run again)"
        ) from None
    return _finish(summary, verb)


def _import_mbox(args: argparse.Namespace) -> int:
    from txmail.migrate.mbox import import_mbox

    _, store, _ = _store(args)
    return _run(args, lambda: import_mbox(store, args.path, args.folder, report=_cli()._out), "imported")


def _import_maildir(args: argparse.Namespace) -> int:
    from txmail.migrate.maildir import import_maildir

    _, store, _ = _store(args)
    return _run(args, lambda: import_maildir(store, args.path, report=_cli()._out), "imported")


def _password(args: argparse.Namespace) -> str:
    cli = _cli()
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as e:
            raise cli.CLIError(f"cannot read {args.password_file}: {e.strerror or e}") from None
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass(f"Password of {args.login or args.user} at {args.server}: ")
        except (EOFError, KeyboardInterrupt):
            raise cli.CLIError("no password given") from None
    if not password:
        raise cli.CLIError("empty password")
    return password


def _import_imap(args: argparse.Namespace) -> int:
    from txmail.migrate.imap import IMAPSource, ImportState, import_imap, state_path

    cli = _cli()
    default_port = 993 if args.security == "tls" else 143
    try:
        host, port = parse_host_port(args.server, default_port)
    except ConfigError as e:
        raise cli.CLIError(f"server: {e}") from None
    settings, store, user = _store(args)
    source = IMAPSource(
        host,
        port,
        args.login or args.user,
        _password(args),
        security=args.security,
        insecure=args.insecure,
        cafile=args.cafile,
    )

    def work() -> Summary:
        state = ImportState(args.state or state_path(settings.data_dir, user, source))
        return import_imap(store, source, state, report=cli._out, max_messages=args.max_messages)

    return _run(args, work, "imported")


def _export_maildir(args: argparse.Namespace) -> int:
    from txmail.migrate.maildir import export_maildir

    _, store, _ = _store(args)
    return _run(args, lambda: export_maildir(store, args.path, report=_cli()._out), "exported")


def _export_mbox(args: argparse.Namespace) -> int:
    from txmail.migrate.mbox import export_mbox

    _, store, _ = _store(args)
    return _run(args, lambda: export_mbox(store, args.path, report=_cli()._out), "exported")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``import`` and ``export`` to the ``txmail`` parser's *commands*; *common* has ``--data-dir`` and ``--config``."""
    user = argparse.ArgumentParser(add_help=False)
    user.add_argument("--user", required=True, metavar="ADDRESS", help="the txmail user whose store it is")

    imports = commands.add_parser(
        "import", help="import mail into a user's store (mbox, Maildir, another IMAP server)"
    ).add_subparsers(dest="action", metavar="SOURCE", required=True)
    p = imports.add_parser(
        "mbox",
        parents=[common, user],
        help="import an mbox file, or a directory of them",
        description=(
            "Import the messages of an mbox file into --folder (default INBOX), created if missing; "
            "or of every mbox file under a directory into the folders their paths name. "
            "Status:, X-Status: and X-Keywords: become flags and keywords."
        ),
    )
    p.add_argument("path", metavar="PATH", help="an mbox file, or a directory of them")
    p.add_argument("--folder", metavar="NAME", default=None, help="the folder to import into (default INBOX)")
    p.set_defaults(func=_import_mbox)

    p = imports.add_parser(
        "maildir",
        parents=[common, user],
        help="import a Maildir tree (Dovecot's layout)",
        description=(
            "Import a Maildir++ tree as Dovecot keeps it: the INBOX and every .Folder, flags and "
            "keywords (dovecot-keywords), internal dates (file times) and subscriptions."
        ),
    )
    p.add_argument("path", metavar="DIR", help="the Maildir (the INBOX, with cur/ and new/)")
    p.set_defaults(func=_import_maildir)

    p = imports.add_parser(
        "imap",
        parents=[common, user],
        help="import every folder from another IMAP server (resumable)",
        description=(
            "Copy every folder and message of an account on another IMAP server, with flags, "
            "keywords and internal dates. Nothing is changed on the server. A state file records "
            "what was copied: running again copies only what is new, and an interrupted run goes on."
        ),
    )
    p.add_argument(
        "server", metavar="HOST[:PORT]", help="the server (port 993 with --security tls, else 143)"
    )
    p.add_argument("--login", metavar="NAME", default=None, help="the login name there (default: --user)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p.add_argument(
        "--password-file", metavar="FILE", default=None, help="read the password from FILE's first line"
    )
    p.add_argument(
        "--security",
        choices=("tls", "starttls", "none"),
        default="starttls",
        help="implicit TLS, STARTTLS (the default) or none (plain text: only on a trusted network)",
    )
    p.add_argument("--insecure", action="store_true", help="do not check the server's certificate")
    p.add_argument("--cafile", metavar="FILE", default=None, help="the CA certificates to trust (PEM)")
    p.add_argument(
        "--state",
        metavar="FILE",
        default=None,
        help="the resume state file (default <data-dir>/migrate/USER/LOGIN@HOST:PORT.json)",
    )
    p.add_argument(
        "--max-messages",
        metavar="N",
        type=_positive,
        default=None,
        help="stop after N messages (run again to go on)",
    )
    p.set_defaults(func=_import_imap)

    exports = commands.add_parser("export", help="export a user's store (Maildir, mbox)").add_subparsers(
        dest="action", metavar="FORMAT", required=True
    )
    p = exports.add_parser(
        "maildir",
        parents=[common, user],
        help="write the user's store as a Maildir tree (Dovecot's layout)",
    )
    p.add_argument("path", metavar="DIR", help="a new or empty directory")
    p.set_defaults(func=_export_maildir)
    p = exports.add_parser("mbox", parents=[common, user], help="write each folder as an mbox file")
    p.add_argument("path", metavar="DIR", help="a new or empty directory")
    p.set_defaults(func=_export_mbox)
