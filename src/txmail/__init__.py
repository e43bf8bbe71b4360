"""
txmail: a mail server framework and reference mail server built on Twisted.

SMTP, POP3 and IMAP share one mailbox contract (:mod:`txmail.interfaces`)
and one delivery router; ``twistd mailserver`` wires them into a running
server.

The public API
--------------
The names listed in ``__all__`` here are the entry points an embedder needs,
re-exported from the modules that define them (which stay the place to
import from as well)::

    from txmail import MemoryProvider, Settings, build_service

    settings = Settings.validated(domains=["example.com"], imap=["tcp:1143"])
    server = build_service(settings, stores=MemoryProvider(), directory=my_directory,
                           delivery_hook=my_hook)
    server.setServiceParent(application)  # or server.startService()

* configuration: :class:`Settings` (:meth:`Settings.validated`),
  :func:`load_config`, :class:`ConfigError`;
* the server: :func:`build_service`, :class:`MailServer`;
* the contracts a backend implements: :class:`IMailStoreProvider`,
  :class:`IMailStore`, :class:`IMailbox`, :class:`IDirectory`,
  :class:`IDeliveryHook` (and :class:`IDeliveryRouter`, :class:`IQueue`);
* the values crossing them (:mod:`txmail.model`);
* ready implementations: :class:`MemoryProvider`, :class:`MaildirProvider`,
  :class:`FileDirectory`; :func:`make_credentials` for a directory's
  stored passwords;
* delivery hooks: :class:`HookResult`, :class:`HookAction`.

Implementation notes: every submodule imports this package first, and some
of them must not import Twisted (the sans-IO modules), so the re-exports
are resolved lazily by a module ``__getattr__`` (PEP 562) on first use.
Names in any other module's ``__all__`` are public too; names with a
leading underscore, and modules whose name starts with one, are not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # configuration and the server
    "Settings": "txmail.config",
    "load_config": "txmail.config",
    "ConfigError": "txmail.errors",
    "build_service": "txmail.service",
    "MailServer": "txmail.service",
    # contracts
    "IDeliveryHook": "txmail.interfaces",
    "IDeliveryRouter": "txmail.interfaces",
    "IDirectory": "txmail.interfaces",
    "IMailStore": "txmail.interfaces",
    "IMailStoreProvider": "txmail.interfaces",
    "IMailbox": "txmail.interfaces",
    "IQueue": "txmail.interfaces",
    # values
    "INBOX": "txmail.model",
    "DeliveryReport": "txmail.model",
    "Envelope": "txmail.model",
    "FlagMode": "txmail.model",
    "FlagsChanged": "txmail.model",
    "FolderInfo": "txmail.model",
    "MailboxChange": "txmail.model",
    "MailboxDeleted": "txmail.model",
    "MailboxStatus": "txmail.model",
    "MessageInfo": "txmail.model",
    "MessageMetadata": "txmail.model",
    "MessageSource": "txmail.model",
    "MessagesAdded": "txmail.model",
    "MessagesExpunged": "txmail.model",
    "QueueEntry": "txmail.model",
    "RecipientResult": "txmail.model",
    "SpecialUse": "txmail.model",
    # errors a backend or directory raises
    "InvalidMailboxName": "txmail.errors",
    "MailboxExists": "txmail.errors",
    "MailboxNotEmpty": "txmail.errors",
    "NoSuchMailbox": "txmail.errors",
    "NoSuchMessage": "txmail.errors",
    "NoSuchUser": "txmail.errors",
    # implementations
    "FileDirectory": "txmail.directory",
    "MaildirProvider": "txmail.store.maildir",
    "MemoryProvider": "txmail.store.memory",
    "make_credentials": "txmail.auth.passwords",
    # delivery hooks
    "HookAction": "txmail.delivery.hooks",
    "HookResult": "txmail.delivery.hooks",
}

__all__ = [
    "INBOX",
    "ConfigError",
    "DeliveryReport",
    "Envelope",
    "FileDirectory",
    "FlagMode",
    "FlagsChanged",
    "FolderInfo",
    "HookAction",
    "HookResult",
    "IDeliveryHook",
    "IDeliveryRouter",
    "IDirectory",
    "IMailStore",
    "IMailStoreProvider",
    "IMailbox",
    "IQueue",
    "InvalidMailboxName",
    "MailServer",
    "MailboxChange",
    "MailboxDeleted",
    "MailboxExists",
    "MailboxNotEmpty",
    "MailboxStatus",
    "MaildirProvider",
    "MemoryProvider",
    "MessageInfo",
    "MessageMetadata",
    "MessageSource",
    "MessagesAdded",
    "MessagesExpunged",
    "NoSuchMailbox",
    "NoSuchMessage",
    "NoSuchUser",
    "QueueEntry",
    "RecipientResult",
    "Settings",
    "SpecialUse",
    "__version__",
    "build_service",
    "load_config",
    "make_credentials",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from txmail.auth.passwords import make_credentials
    from txmail.config import Settings, load_config
    from txmail.delivery.hooks import HookAction, HookResult
    from txmail.directory import FileDirectory
    from txmail.errors import (
        ConfigError,
        InvalidMailboxName,
        MailboxExists,
        MailboxNotEmpty,
        NoSuchMailbox,
        NoSuchMessage,
        NoSuchUser,
    )
    from txmail.interfaces import (
        IDeliveryHook,
        IDeliveryRouter,
        IDirectory,
        IMailbox,
        IMailStore,
        IMailStoreProvider,
        IQueue,
    )
    from txmail.model import (
        INBOX,
        DeliveryReport,
        Envelope,
        FlagMode,
        FlagsChanged,
        FolderInfo,
        MailboxChange,
        MailboxDeleted,
        MailboxStatus,
        MessageInfo,
        MessageMetadata,
        MessagesAdded,
        MessagesExpunged,
        MessageSource,
        QueueEntry,
        RecipientResult,
        SpecialUse,
    )
    from txmail.service import MailServer, build_service
    from txmail.store.maildir import MaildirProvider
    from txmail.store.memory import MemoryProvider


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'txmail' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
