"""
Migration and backup: mail into and out of a user's store.

* :func:`import_mbox` (:mod:`txmail.migrate.mbox`): mbox files (mboxrd,
  mboxo), flags from ``Status:``/``X-Status:``/``X-Keywords:``.
* :func:`import_maildir` (:mod:`txmail.migrate.maildir`): a Maildir++
  tree in Dovecot's layout, keywords included.
* :func:`import_imap` (:mod:`txmail.migrate.imap`): every folder of an
  account on another IMAP server, resumable as imapsync is.
* :func:`export_maildir` and :func:`export_mbox`: a user's whole store as a
  Dovecot-layout Maildir tree, or as mbox files.

Everything goes through the mailbox contract of :mod:`txmail.interfaces`
(:meth:`~txmail.interfaces.IMailbox.append` with flags and internal date),
so it works on every backend; the sources are only read.  The functions
block (file and network work inline) and expect a store whose Deferreds
fire inline, as the admin command builds it (:mod:`txmail.migrate._store`);
``txmail import`` and ``txmail export`` (:mod:`txmail.migrate.cli`) are
their command line.
"""

from __future__ import annotations

from txmail.migrate._store import MigrationError, Summary
from txmail.migrate.imap import IMAPSource, ImportState, import_imap, state_path
from txmail.migrate.maildir import export_maildir, import_maildir
from txmail.migrate.mbox import export_mbox, import_mbox

__all__ = [
    "IMAPSource",
    "ImportState",
    "MigrationError",
    "Summary",
    "export_maildir",
    "export_mbox",
    "import_imap",
    "import_maildir",
    "import_mbox",
    "state_path",
]
