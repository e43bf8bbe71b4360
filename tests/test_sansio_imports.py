"""
The sans-IO modules import nothing from Twisted (STYLE.md, "Sans-IO modules").

Later protocols add their pure modules to :data:`SANS_IO_MODULES`.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

__all__ = ["SANS_IO_MODULES", "twisted_imports"]

_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

#: Source files (relative to ``src/``) that must never import Twisted.
SANS_IO_MODULES = (
    "txmail/_session.py",
    "txmail/_events.py",
    "txmail/auth/exchange.py",
    "txmail/smtp/codes.py",
    "txmail/smtp/grammar.py",
    "txmail/smtp/events.py",
    "txmail/smtp/dotstuff.py",
    "txmail/smtp/session.py",
    "txmail/imap/fragment.py",
    "txmail/imap/parser.py",
    "txmail/imap/fetch.py",
    "txmail/smtp/client.py",
    "txmail/delivery/backoff.py",
    "txmail/delivery/bounce.py",
    "txmail/delivery/hooks.py",
    "txmail/imap/search.py",
    "txmail/imap/columns.py",
    "txmail/imap/structures.py",
    "txmail/imap/view.py",
    "txmail/imap/session.py",
    "txmail/imap/events.py",
    "txmail/imap/types.py",
    "txmail/imap/serialize.py",
    "txmail/imap/responses.py",
    "txmail/imap/commands/__init__.py",
    "txmail/imap/commands/registry.py",
    "txmail/imap/commands/context.py",
    "txmail/imap/commands/base.py",
    "txmail/imap/commands/mailboxes.py",
    "txmail/imap/commands/selected.py",
    "txmail/imap/commands/sort.py",
    "txmail/imap/thread.py",
    "txmail/imap/commands/condstore.py",
    "txmail/imap/commands/qresync.py",
    "txmail/imap/commands/create_special_use.py",
    "txmail/imap/commands/multiappend.py",
    "txmail/imap/commands/binary.py",
    "txmail/imap/commands/replace.py",
    "txmail/imap/commands/compress.py",
    "txmail/imap/commands/preview.py",
    "txmail/imap/commands/utf8.py",
    "txmail/imap/commands/imap4rev2.py",
    "txmail/imap/commands/searchres.py",
    "txmail/imap/commands/notify.py",
    "txmail/imap/commands/notify_metadata.py",
    "txmail/imap/commands/objectid.py",
    "txmail/imap/commands/savedate.py",
    "txmail/imap/commands/metadata.py",
    "txmail/imap/commands/context_updates.py",
    "txmail/imap/contexts.py",
    "txmail/imap/binary.py",
    "txmail/pop3/events.py",
    "txmail/pop3/session.py",
    "txmail/managesieve/grammar.py",
    "txmail/managesieve/events.py",
    "txmail/managesieve/session.py",
    "txmail/auth/sasl.py",
    "txmail/auth/passwords.py",
    "txmail/model.py",
    "txmail/mime.py",
    "txmail/policy/spf.py",
    "txmail/policy/authres.py",
    "txmail/policy/dmarc.py",
    "txmail/policy/srs.py",
    "txmail/sieve/__init__.py",
    "txmail/sieve/actions.py",
    "txmail/sieve/commands.py",
    "txmail/sieve/errors.py",
    "txmail/sieve/grammar.py",
    "txmail/sieve/interpreter.py",
    "txmail/sieve/limits.py",
    "txmail/sieve/matching.py",
    "txmail/sieve/message.py",
    "txmail/sieve/vacation.py",
    "txmail/policy/dkim.py",
    "txmail/policy/arc.py",
    "txmail/policy/hooks.py",
    "txmail/policy/iprev.py",
    "txmail/policy/config.py",
    "txmail/policy/rspamd_settings.py",
    "txmail/dnsdata.py",
    "txmail/dnsrecords.py",
    "txmail/milter/protocol.py",
    "txmail/milter/edits.py",
    "txmail/milter/settings.py",
    "txmail/proxyproto.py",
)


def twisted_imports(source: str) -> list[str]:
    """The names of every Twisted module *source* imports, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args:
            arg = node.args[0]
            names = [arg.value] if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else []
        else:
            continue
        found.extend(n for n in names if n == "twisted" or n.startswith("twisted."))
    return found


class SansIOImportTests(SynchronousTestCase):
    def test_checker_finds_twisted_imports(self) -> None:
        """The checker sees plain, from- and nested imports of twisted, and ignores others."""
        source = (
            "import os\nfrom twisted.internet import defer\n"
            "def f():\n    import twisted.logger\n    from txmail import model\n"
            "__import__('twisted.python')\n"
        )
        self.assertEqual(
            sorted(twisted_imports(source)), ["twisted.internet", "twisted.logger", "twisted.python"]
        )

    def test_sans_io_modules_do_not_import_twisted(self) -> None:
        """No listed sans-IO module imports anything from twisted."""
        for relative in SANS_IO_MODULES:
            path = os.path.join(_SRC, relative)
            with open(path, encoding="utf-8") as f:
                source = f.read()
            self.assertEqual(twisted_imports(source), [], relative)
