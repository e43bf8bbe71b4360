"""
The JMAP mail capabilities (RFC 8621): :func:`capabilities` gives the
``urn:ietf:params:jmap:mail`` capability, with the methods of
:mod:`txmail.jmap.mailbox`, :mod:`txmail.jmap.email` and
:mod:`txmail.jmap.thread`, and the ``urn:ietf:params:jmap:submission``
one.

Every method works on one user's :class:`txmail.interfaces.IMailStore`
(``context.store``); :mod:`txmail.jmap.state` explains the ids and the
state strings.  The account capability objects are those of RFC 8621
sections 1.3.1 and 1.3.2.
"""

from __future__ import annotations

import functools
from typing import Any

from txmail.jmap import email, mailbox, query, submission, thread
from txmail.jmap.core import MAIL, SUBMISSION, CallContext, Capability, Limits
from txmail.jmap.mailbox import MAX_MAILBOX_DEPTH
from txmail.jmap.state import mail_view

__all__ = ["MAX_MAILBOX_DEPTH", "capabilities", "mail_account", "states", "submission_account"]


def mail_account(user: str, max_size: int | None = None) -> dict[str, Any]:
    """
    The ``urn:ietf:params:jmap:mail`` account capability object (RFC 8621
    section 1.3.1).  An Email created by ``Email/set`` is refused when it is
    larger than *max_size* (the core ``maxSizeUpload``, the same limit a
    message uploaded for ``Email/import`` has; its default when ``None``),
    which bounds its attachments too.
    """
    if max_size is None:
        max_size = Limits().max_size_upload
    return {
        "maxMailboxesPerEmail": None,
        "maxMailboxDepth": MAX_MAILBOX_DEPTH,
        "maxSizeMailboxName": 255,
        "maxSizeAttachmentsPerEmail": max_size,
        "emailQuerySortOptions": list(email.SORTS),
        "mayCreateTopLevelMailbox": True,
    }


def submission_account(user: str) -> dict[str, Any]:
    """The ``urn:ietf:params:jmap:submission`` account capability object (RFC 8621 section 1.3.2)."""
    return {"maxDelayedSend": 0, "submissionExtensions": {}}


async def states(context: CallContext) -> dict[str, str]:
    """The state of each mail data type, for push (RFC 8620 section 7.1)."""
    view = await mail_view(context.store)
    email_state = view.email_state()
    return {"Mailbox": await view.mailbox_state(), "Email": email_state, "Thread": email_state}


def capabilities(limits: Limits | None = None) -> list[Capability]:
    """The mail and submission capabilities, under the core *limits* (the defaults when ``None``)."""
    max_size = (limits or Limits()).max_size_upload
    methods: dict[str, Any] = {}
    methods.update(mailbox.METHODS)
    methods.update(email.METHODS)
    methods.update(query.METHODS)
    methods.update(thread.METHODS)
    methods.update(submission.METHODS)
    return [
        Capability(MAIL, {}, functools.partial(mail_account, max_size=max_size), methods, states, email.blob),
        Capability(SUBMISSION, {}, submission_account, dict(submission.SUBMISSION_METHODS)),
    ]
