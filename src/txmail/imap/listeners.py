"""
Copy listeners: code told when an IMAP user copies or moves messages from
one mailbox into another (COPY, MOVE, UID COPY, UID MOVE; RFC 3501
section 6.4.7, RFC 6851), after the command succeeded.  A spam filter
learns from it (a message moved into Junk is spam, one moved out of Junk
is ham: what Dovecot's IMAPSieve scripts do with ``rspamc``); an archiver
or an audit log could use it too::

    class Audit:
        def messages_copied(self, event: MessagesCopied) -> None:
            log.info("{user} filed {n} messages into {target}",
                     user=event.user, n=len(event.uids), target=event.target)

    IMAPFactory(authenticator=..., stores=..., copy_listeners=[Audit()])

Theory of operation
-------------------
* A listener is any object with ``messages_copied(event)``.  It is called
  once per successful command that copied at least one message, after the
  tagged ``OK`` was written: the client never waits for a listener, and a
  slow or failing listener cannot fail the command.  A listener that has
  slow work to do (an HTTP request, say) starts it and returns; what it
  returns is ignored, except that a Deferred that fails, or an exception,
  is logged.
* The event says who (``user``), from where to where (mailbox names, and
  their RFC 6154 special use when they have one: ``\\Junk``, ``\\Trash``),
  whether the messages were moved (MOVE) or copied (COPY; a client that
  then expunges the originals makes it a move in effect, but that is not
  reported separately), and which messages (source and target UIDs, in the
  order of the command).
* The messages are read from the **target** mailbox, through the mailbox
  contract (:meth:`MessagesCopied.read_message`): the copy is there when
  the listener runs (the originals of a MOVE are gone).  A message that was
  moved again meanwhile fails with :class:`txmail.errors.NoSuchMessage`.
* Copies the server makes itself (delivery into a policy's folder) are not
  reported: only what a user did over IMAP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from txmail.model import SpecialUse

if TYPE_CHECKING:
    from twisted.internet import defer

    from txmail.interfaces import IMailbox

__all__ = ["CopyListener", "MessagesCopied"]


@dataclass(frozen=True)
class MessagesCopied:
    """
    One successful COPY or MOVE (see the module notes).

    Attributes:
        user: the user (as the authenticator gave it).
        source: the name of the mailbox the messages came from.
        target: the name of the mailbox they went into.
        source_special_use: the source's RFC 6154 role, or ``None``.
        target_special_use: the target's RFC 6154 role, or ``None``.
        moved: MOVE (the originals are gone) rather than COPY.
        uids: ``(source uid, target uid)`` per message.
        target_mailbox: the target :class:`txmail.interfaces.IMailbox`.
        session_id: the IMAP connection's id in the logs.
    """

    user: str
    source: str
    target: str
    source_special_use: SpecialUse | None
    target_special_use: SpecialUse | None
    moved: bool
    uids: tuple[tuple[int, int], ...]
    target_mailbox: IMailbox
    session_id: str = ""

    def read_message(self, target_uid: int) -> defer.Deferred[bytes]:
        """The whole message with *target_uid* in the target mailbox."""
        return self.target_mailbox.read_message(target_uid)


class CopyListener(Protocol):
    """What :class:`txmail.imap.server.IMAPFactory` ``copy_listeners`` hold."""

    def messages_copied(self, event: MessagesCopied) -> Any:
        """Messages were copied or moved (see the module notes); return quickly."""
