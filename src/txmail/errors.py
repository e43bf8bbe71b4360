"""
Base exception types shared across layers.

Each layer maps these to its protocol's replies in one place (SMTP reply
codes, POP3 ``-ERR`` codes, IMAP ``NO``/``BAD`` responses).  Exception text
is for logs; it is never sent to a client.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatabaseError",
    "DeliveryError",
    "DirectoryError",
    "InvalidMailboxName",
    "InvalidScriptName",
    "MailboxExists",
    "MailboxNotEmpty",
    "NoSuchMailbox",
    "NoSuchMessage",
    "NoSuchScript",
    "NoSuchUser",
    "QueueError",
    "SchemaTooOld",
    "ScriptActive",
    "ScriptExists",
    "StoreError",
    "TxMailError",
    "UserExists",
]


class TxMailError(Exception):
    """Base class of every exception txmail raises on purpose."""


class StoreError(TxMailError):
    """A mailbox store could not do what was asked."""


class NoSuchMailbox(StoreError):
    """The named mailbox does not exist."""


class MailboxExists(StoreError):
    """A mailbox of that name exists already."""


class InvalidMailboxName(StoreError):
    """The name is not a valid mailbox name (empty, ``..``, bad characters)."""


class MailboxNotEmpty(StoreError):
    """The operation needs an empty mailbox (or one without children)."""


class NoSuchMessage(StoreError):
    """No message with that UID exists (any more) in the mailbox."""


class NoSuchScript(StoreError):
    """No Sieve script of that name exists (ManageSieve ``NONEXISTENT``)."""


class ScriptExists(StoreError):
    """A Sieve script of that name exists already (ManageSieve ``ALREADYEXISTS``)."""


class ScriptActive(StoreError):
    """The active Sieve script cannot be deleted (ManageSieve ``ACTIVE``)."""


class InvalidScriptName(StoreError):
    """Not a valid Sieve script name (RFC 5804 section 1.6)."""


class DirectoryError(TxMailError):
    """The user directory could not do what was asked."""


class NoSuchUser(DirectoryError):
    """No user or alias answers to that address."""


class UserExists(DirectoryError):
    """A user or alias of that address exists already."""


class DeliveryError(TxMailError):
    """
    A message could not be delivered to a recipient.

    Attributes:
        temporary: ``True`` when a later attempt may succeed (SMTP 4xx),
            ``False`` for a permanent failure (5xx).  Unknown causes count
            as temporary.
    """

    def __init__(self, message: str, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


class QueueError(TxMailError):
    """The outbound queue could not do what was asked."""


class ConfigError(TxMailError):
    """The configuration is invalid; the text says which key and why."""


class DatabaseError(TxMailError):
    """The database (``[postgresql]``) cannot be used: unreachable, or its schema does not fit."""


class SchemaTooOld(DatabaseError):
    """The database schema is older than this txmail's: run ``txmail db upgrade``."""
