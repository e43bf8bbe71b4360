"""
The actions a Sieve run asks for, and its :class:`Result`.

Actions are frozen dataclasses, in the order the script took them.  Keep,
fileinto and redirect carry the header section as editheader (RFC 5293)
left it when they were taken (``None`` when it was not changed): the
delivery code stores or sends the message with those fields.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "Action",
    "Discard",
    "DuplicateMark",
    "FileInto",
    "Keep",
    "Redirect",
    "Reject",
    "Result",
    "Vacation",
    "rebuild_message",
]

#: Header fields as ``(name, raw value)``: the value as in the message
#: (latin-1 text of its octets, folding kept), without the line end.
Fields = tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Keep:
    """Store in the default mailbox (RFC 5228 section 4.3) with *flags* (RFC 5232)."""

    flags: tuple[str, ...] = ()
    headers: Fields | None = None


@dataclasses.dataclass(frozen=True)
class FileInto:
    """Store in *mailbox* (RFC 5228 section 4.1), creating it first if *create* (RFC 5490)."""

    mailbox: str
    flags: tuple[str, ...] = ()
    create: bool = False
    copy: bool = False
    headers: Fields | None = None


@dataclasses.dataclass(frozen=True)
class Redirect:
    """Send to *address* (RFC 5228 section 4.2) with the original envelope sender; *copy*: RFC 3894."""

    address: str
    copy: bool = False
    headers: Fields | None = None


@dataclasses.dataclass(frozen=True)
class Discard:
    """Throw the message away (RFC 5228 section 4.4)."""


@dataclasses.dataclass(frozen=True)
class Reject:
    """
    Refuse the message with *reason* (RFC 5429): with *ereject* in the SMTP
    transaction when possible; otherwise (and for ``reject``) with a
    delivery status notification to the envelope sender (section 2.1.1).
    """

    reason: str
    ereject: bool = False


@dataclasses.dataclass(frozen=True)
class Vacation:
    """
    Send the auto-reply *reply* (RFC 5230, RFC 3834), complete with its
    header section, from the null envelope sender to *to*; then record in
    the vacation tracker that *to* got the reply *handle*, for *seconds*.
    """

    to: str
    sender: str
    subject: str
    reason: str
    mime: bool
    handle: str
    seconds: int
    reply: bytes


Action = Keep | FileInto | Redirect | Discard | Reject | Vacation


@dataclasses.dataclass(frozen=True)
class DuplicateMark:
    """A ``duplicate`` test's identifier to record once the message is delivered (RFC 7352 section 3)."""

    id: str
    handle: str
    seconds: int
    last: bool


@dataclasses.dataclass(frozen=True)
class Result:
    """
    What a run decided.

    *actions* are the explicit actions in order.  When *implicit_keep* is
    true the message is also stored in the default mailbox with
    *keep_flags* and the header section *headers* (``None``: unchanged).
    *errors* holds the runtime error or the limit that was hit: then
    *actions* is empty and *implicit_keep* true (RFC 5228 section 2.10.6).
    *duplicates* are for the duplicate tracker once delivery succeeded; *log*
    notes what was done quietly (a vacation reply not sent and why...).
    """

    actions: tuple[Action, ...] = ()
    implicit_keep: bool = True
    keep_flags: tuple[str, ...] = ()
    headers: Fields | None = None
    errors: tuple[str, ...] = ()
    duplicates: tuple[DuplicateMark, ...] = ()
    log: tuple[str, ...] = ()

    @property
    def deliveries(self) -> tuple[Action, ...]:
        """*actions* with the implicit keep added as a :class:`Keep` at the end when it applies."""
        if self.implicit_keep:
            return (*self.actions, Keep(self.keep_flags, self.headers))
        return self.actions


def rebuild_message(original: bytes, headers: Fields | None) -> bytes:
    """*original* with its header section replaced by *headers* (``None``: unchanged)."""
    if headers is None:
        return original
    from txmail.sieve.message import split_header_section

    _, body = split_header_section(original)
    section = b"".join(f"{name}: {value}\r\n".encode("latin-1", errors="replace") for name, value in headers)
    return section + b"\r\n" + body
