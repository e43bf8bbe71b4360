"""
The object ids of RFC 8474 (IMAP OBJECTID) that the memory and Maildir
stores give mailboxes and messages.

Every id is an ASCII letter naming its kind (``F`` a mailbox, ``M`` a
message) and 24 hexadecimal digits (96 bits), 25 characters in all: a
valid ``objectid`` (RFC 8474 section 7: 1 to 255 characters of
``[A-Za-z0-9_-]``) and a valid JMAP ``Id`` (RFC 8620 section 1.2, which
also recommends a leading letter), so that a JMAP server over the same
stores can use them as they are.

Pure functions: no I/O, no Twisted.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["derived_email_id", "is_object_id", "new_email_id", "new_mailbox_id"]

_OBJECT_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def is_object_id(text: str) -> bool:
    """RFC 8474 section 7: ``objectid = 1*255(ALPHA / DIGIT / "_" / "-")``."""
    return 0 < len(text) <= 255 and _OBJECT_ID_CHARS.issuperset(text)


def new_mailbox_id() -> str:
    """
    A fresh MAILBOXID (RFC 8474 section 4): ``F`` and 96 random bits in
    hexadecimal, 25 characters, a valid JMAP ``Id`` (RFC 8620 section 1.2).
    """
    return "F" + secrets.token_hex(12)


def new_email_id() -> str:
    """A fresh EMAILID (RFC 8474 section 5.1): ``M`` and 96 random bits in hexadecimal."""
    return "M" + secrets.token_hex(12)


def derived_email_id(name: str) -> str:
    """
    The EMAILID of a message known by a unique, stable *name* (a Maildir
    file's base name) that was given none when it came in: ``M`` and 96
    bits of its BLAKE2b hash, so that it is the same each time it is
    derived.
    """
    return "M" + hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
