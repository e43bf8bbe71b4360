"""
Sending mail over JMAP (RFC 8621 sections 6 and 7): ``Identity/get``,
``/changes`` and ``/set``, ``EmailSubmission/get``, ``/changes``,
``/query``, ``/queryChanges`` and ``/set``, and ``SearchSnippet/get``
(section 5).

An EmailSubmission goes the way of SMTP submission (:mod:`txmail.smtp.server`):

* the envelope's ``MAIL FROM`` and the message's ``From`` must be addresses
  the user owns (``IDirectory.owns_address``; an alias of theirs counts),
  else ``forbiddenFrom``, as SMTP answers ``553 5.7.1``;
* each recipient is checked by the delivery router as at ``RCPT TO`` for an
  authenticated client (``check_recipient``; ``invalidRecipients`` lists
  the refused ones);
* the ``Bcc`` field is removed from what is sent (section 7.5), a
  ``Received`` field is prepended as SMTP's server does, and the message is
  DKIM-signed with the author domain's keys when the server signs
  submissions (the :class:`txmail.policy.authentication.DKIMSigner` among
  its policies);
* then ``router.deliver``: local recipients get it in their mailboxes,
  remote ones through the queue (with its retries and bounces).

Submissions are final when accepted (no ``maxDelayedSend``, no undo), and
are not kept: ``EmailSubmission/get`` finds none, ``/changes`` reports none,
``/query`` matches none.  An identity is the user's own address (the
directory tells whether an address is the user's, not which addresses
are): its id is derived from it, and ``Identity/set`` changes nothing.

This module is sans-IO apart from the Deferreds of the store, directory and
router.
"""

from __future__ import annotations

import hashlib
import html
import time
from typing import TYPE_CHECKING, Any

from txmail.jmap import body as bodies
from txmail.jmap.common import (
    check_filter,
    check_if_in_state,
    get_ids,
    invalid,
    max_changes,
    optional_bool,
    properties,
    resolve_id,
    set_arguments,
)
from txmail.jmap.core import CallContext, MethodError, set_error
from txmail.jmap.mailbox import window
from txmail.jmap.state import mail_view
from txmail.model import Envelope, MessageSource
from txmail.smtp import grammar

if TYPE_CHECKING:
    from txmail.service import MailServer

__all__ = ["METHODS", "SUBMISSION_METHODS", "identity_id"]

IDENTITY_PROPERTIES = ("id", "name", "email", "replyTo", "bcc", "textSignature", "htmlSignature", "mayDelete")
#: The state of Identities and EmailSubmissions: they never change.
FIXED_STATE = "s0"


def identity_id(address: str) -> str:
    """The id of the identity of *address*: ``I`` and 96 bits of a hash of it."""
    return "I" + hashlib.blake2b(address.lower().encode("utf-8"), digest_size=12).hexdigest()


def _identity(context: CallContext) -> dict[str, Any]:
    return {
        "id": identity_id(context.user),
        "name": "",
        "email": context.user,
        "replyTo": None,
        "bcc": None,
        "textSignature": "",
        "htmlSignature": "",
        "mayDelete": False,
    }


async def identity_get(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Identity/get`` (RFC 8621 section 6.1)."""
    ids = get_ids(context, arguments)
    wanted = properties(arguments, IDENTITY_PROPERTIES, IDENTITY_PROPERTIES)
    identity = _identity(context)
    found = ids is None or identity["id"] in ids
    return {
        "accountId": context.account_id,
        "state": FIXED_STATE,
        "list": [{p: identity[p] for p in wanted}] if found else [],
        "notFound": [] if ids is None else [i for i in ids if i != identity["id"]],
    }


async def fixed_changes(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Identity/changes`` and ``EmailSubmission/changes``: nothing ever changes."""
    context.check_account(arguments)
    since = arguments.get("sinceState")
    if not isinstance(since, str):
        raise invalid("sinceState", "sinceState must be a state string")
    if since != FIXED_STATE:
        raise MethodError("cannotCalculateChanges")
    return {
        "accountId": context.account_id,
        "oldState": since,
        "newState": FIXED_STATE,
        "hasMoreChanges": False,
        "created": [],
        "updated": [],
        "destroyed": [],
    }


async def identity_set(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """
    ``Identity/set`` (RFC 8621 section 6.3): the user's one identity is
    their own address and is not kept anywhere, so nothing is created,
    changed or destroyed: each operation is ``forbidden`` (``notFound`` for
    another id), as section 6.3 allows a server that forbids them.
    """
    create, update, destroy = set_arguments(context, arguments)
    check_if_in_state(arguments, FIXED_STATE)
    own = identity_id(context.user)
    fixed = "identities are fixed: one a user, their own address"

    def refused(object_id: str) -> dict[str, Any]:
        return set_error("forbidden", fixed) if object_id == own else set_error("notFound")

    return {
        "accountId": context.account_id,
        "oldState": FIXED_STATE,
        "newState": FIXED_STATE,
        "created": None,
        "updated": None,
        "destroyed": None,
        "notCreated": {c: set_error("forbidden", fixed) for c in create} or None,
        "notUpdated": {i: refused(i) for i in update} or None,
        "notDestroyed": {i: refused(i) for i in destroy} or None,
    }


async def submission_get(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``EmailSubmission/get`` (section 7.1): submissions are not kept."""
    ids = get_ids(context, arguments)
    return {"accountId": context.account_id, "state": FIXED_STATE, "list": [], "notFound": ids or []}


# -- EmailSubmission/query and /queryChanges (sections 7.3 and 7.4) ---------------------------

_SUBMISSION_ID_LISTS = frozenset({"identityIds", "emailIds", "threadIds"})
_SUBMISSION_CONDITIONS = _SUBMISSION_ID_LISTS | {"undoStatus", "before", "after"}
_UNDO_STATUSES = frozenset({"pending", "final", "canceled"})
_SUBMISSION_SORTS = frozenset({"emailId", "threadId", "sentAt"})


def _check_submission_filter(filter: Any) -> None:
    """A FilterCondition of section 7.3 or a FilterOperator of them; else ``unsupportedFilter``."""
    check_filter(filter, _check_submission_condition)


def _check_submission_condition(filter: dict[str, Any]) -> dict[str, Any]:
    unknown = set(filter) - _SUBMISSION_CONDITIONS
    if unknown:
        raise MethodError("unsupportedFilter", f"unknown conditions: {', '.join(sorted(unknown))}")
    for key, value in filter.items():
        if key in _SUBMISSION_ID_LISTS:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif key == "undoStatus":
            ok = value in _UNDO_STATUSES
        else:
            ok = bodies.parse_utc_date(value) is not None
        if not ok:
            raise MethodError("unsupportedFilter", f"bad {key}")
    return filter


def _check_submission_sort(sort: Any) -> None:
    """Comparators on ``emailId``, ``threadId`` or ``sentAt`` (section 7.3); else ``unsupportedSort``."""
    if sort is None:
        return
    if not isinstance(sort, list):
        raise invalid("sort", "sort must be a list of comparators")
    for comparator in sort:
        if (
            not isinstance(comparator, dict)
            or comparator.get("property") not in _SUBMISSION_SORTS
            or not isinstance(comparator.get("isAscending", True), bool)
        ):
            raise MethodError("unsupportedSort", "EmailSubmission/query sorts by emailId, threadId or sentAt")


async def submission_query(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """
    ``EmailSubmission/query`` (section 7.3): the arguments checked as for
    any query (RFC 8620 section 5.5); submissions are not kept, so the
    results are always empty, and never change (``canCalculateChanges``).
    """
    context.check_account(arguments)
    _check_submission_filter(arguments.get("filter"))
    _check_submission_sort(arguments.get("sort"))
    calculate_total = optional_bool(arguments, "calculateTotal")
    position, ids = window(arguments, [])
    out: dict[str, Any] = {
        "accountId": context.account_id,
        "queryState": FIXED_STATE,
        "canCalculateChanges": True,
        "position": position,
        "ids": ids,
    }
    if calculate_total:
        out["total"] = 0
    return out


async def submission_query_changes(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``EmailSubmission/queryChanges`` (section 7.4, RFC 8620 section 5.6): nothing is ever added or removed."""
    context.check_account(arguments)
    _check_submission_filter(arguments.get("filter"))
    _check_submission_sort(arguments.get("sort"))
    since = arguments.get("sinceQueryState")
    if not isinstance(since, str):
        raise invalid("sinceQueryState", "sinceQueryState must be a state string")
    max_changes(arguments)
    up_to = arguments.get("upToId")
    if up_to is not None and not isinstance(up_to, str):
        raise invalid("upToId", "upToId must be an id")
    calculate_total = optional_bool(arguments, "calculateTotal")
    if since != FIXED_STATE:
        raise MethodError("cannotCalculateChanges")
    out: dict[str, Any] = {
        "accountId": context.account_id,
        "oldQueryState": since,
        "newQueryState": FIXED_STATE,
        "removed": [],
        "added": [],
    }
    if calculate_total:
        out["total"] = 0
    return out


def _addresses(value: Any) -> list[str]:
    return [a["email"] for a in value or () if a.get("email")]


def _envelope(
    spec: Any, fields: tuple[tuple[str, str], ...], identity_email: str
) -> tuple[str, list[str]] | None:
    """``(mail from, recipients)``: the given envelope, or section 7's from the header fields."""
    if spec is not None:
        if not isinstance(spec, dict):
            return None
        mail_from = spec.get("mailFrom")
        rcpt_to = spec.get("rcptTo")
        if not isinstance(mail_from, dict) or not isinstance(mail_from.get("email"), str):
            return None
        if not isinstance(rcpt_to, list) or not all(
            isinstance(r, dict) and isinstance(r.get("email"), str) for r in rcpt_to
        ):
            return None
        return mail_from["email"], [r["email"] for r in rcpt_to]
    sender = bodies.header_value(fields, "sender", "Addresses", False) or bodies.header_value(
        fields, "from", "Addresses", False
    )
    mail_from = _addresses(sender)[0] if _addresses(sender) else identity_email
    recipients: list[str] = []
    for name in ("to", "cc", "bcc"):
        for address in _addresses(bodies.header_value(fields, name, "Addresses", False)):
            if address.lower() not in (r.lower() for r in recipients):
                recipients.append(address)
    return mail_from, recipients


def _without_bcc(message: bytes) -> bytes:
    """*message* without its ``Bcc`` fields (section 7.5: they are not sent)."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message
    head, rest = message[: end + 2], message[end + 2 :]
    lines = head.split(b"\r\n")
    out: list[bytes] = []
    skipping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() == b"bcc"
        if not skipping:
            out.append(line)
    return b"\r\n".join(out) + rest


async def _sign(server: MailServer, data: bytes) -> bytes:
    """The DKIM-Signature fields of the server's submission signer for *data*, ``b""`` without one."""
    from txmail.policy.authentication import DKIMSigner

    for policy in getattr(server, "policies", ()) or ():
        if isinstance(policy, DKIMSigner):
            return bytes(await policy.signer.sign(data))
    return b""


async def _submit(context: CallContext, props: dict[str, Any]) -> dict[str, Any]:
    """One EmailSubmission create: ``{"id", ...}`` or a SetError."""
    from txmail.smtp.server import received_header

    server = context.server
    if server is None:
        return set_error("forbidden", "this server does not send mail")
    unknown = sorted(set(props) - {"identityId", "emailId", "envelope"})
    if unknown:
        return set_error("invalidProperties", "not settable", properties=unknown)
    if props.get("identityId") != identity_id(context.user):
        return set_error("invalidProperties", "no such identity", properties=["identityId"])
    email_id = resolve_id(context, props.get("emailId"))
    view = await mail_view(context.store)
    if not isinstance(email_id, str) or email_id not in view.emails:
        return set_error("invalidProperties", "no such Email", properties=["emailId"])
    from txmail.jmap.email import _metadata, read_email

    md = (await _metadata(view, [email_id]))[email_id]
    envelope = _envelope(props.get("envelope"), md.headers, context.user)
    if envelope is None:
        return set_error("invalidProperties", "bad envelope", properties=["envelope"])
    mail_from, recipients = envelope
    if not grammar.is_sendable_mailbox(mail_from):
        return set_error(
            "invalidProperties", "the envelope's mailFrom is not an address", properties=["envelope"]
        )
    if not recipients:
        return set_error("noRecipients", "the Email has no recipients")
    malformed = [r for r in recipients if not grammar.is_sendable_mailbox(r)]
    if malformed:
        return set_error("invalidRecipients", "not addresses SMTP can carry", invalidRecipients=malformed)
    directory = server.directory
    authors = _addresses(bodies.header_value(md.headers, "from", "Addresses", False))
    for address in {mail_from, *authors}:
        if not await directory.owns_address(context.user, address):
            return set_error("forbiddenFrom", f"{context.user} may not send as {address}")
    refused = []
    for recipient in recipients:
        verdict = await server.router.check_recipient(recipient, authenticated_user=context.user)
        if not verdict.ok:
            refused.append(recipient)
    if refused:
        return set_error("invalidRecipients", "refused recipients", invalidRecipients=refused)
    message = await read_email(view, email_id)
    if message is None:
        return set_error("invalidProperties", "the Email went away", properties=["emailId"])
    data = _without_bcc(message)
    if len(data) > server.settings.max_message_size:
        return set_error("tooLarge", "the message is too large", maxSize=server.settings.max_message_size)
    submission_id = "S" + hashlib.blake2b(f"{email_id}{time.time()}".encode(), digest_size=12).hexdigest()
    now = time.time()
    trace = received_header(
        helo="jmap",
        peer_ip="",
        hostname=server.settings.hostname,
        protocol="HTTPSA",
        message_id=submission_id,
        recipients=recipients,
        when=now,
    )
    data = trace + data
    data = await _sign(server, data) + data
    report = await server.router.deliver(
        Envelope(
            mail_from=mail_from,
            rcpt_to=tuple(recipients),
            rcpt_params=tuple({} for _ in recipients),
            helo="jmap",
            authenticated_user=context.user,
            tls=True,
            received_at=now,
            protocol="HTTPSA",
            message_id=submission_id,
        ),
        MessageSource.from_bytes(data),
    )
    if not report.any_ok:
        return set_error(
            "forbiddenToSend",
            "no recipient could be reached: "
            + "; ".join(r.reply.as_text() if r.reply else "" for r in report.results),
        )
    status = {}
    for result in report.results:
        local = bool(directory.is_local_domain(result.recipient.rpartition("@")[2]))
        status[result.recipient] = {
            "smtpReply": result.reply.as_text() if result.reply else "250 2.0.0 OK",
            # Section 7: "yes" once in the recipient's mailbox, "queued" while the queue has it.
            "delivered": ("yes" if local else "queued") if result.ok else "no",
            "displayed": "unknown",
        }
    return {
        "id": submission_id,
        "undoStatus": "final",
        "sendAt": bodies.utc_date(now),
        "deliveryStatus": status,
    }


async def submission_set(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """
    ``EmailSubmission/set`` (RFC 8621 section 7.5): create only (a submission
    is final at once, so there is nothing to update or cancel), then the
    ``onSuccessUpdateEmail`` and ``onSuccessDestroyEmail`` as an implicit
    ``Email/set`` response.
    """
    create, update, destroy = set_arguments(context, arguments)
    on_update = arguments.get("onSuccessUpdateEmail") or {}
    on_destroy = arguments.get("onSuccessDestroyEmail") or []
    if not isinstance(on_update, dict) or not all(isinstance(p, dict) for p in on_update.values()):
        # Checked before anything is sent: a client told "invalidArguments"
        # after its mail went out would send it again.
        raise invalid("onSuccessUpdateEmail", "must map ids to patches")
    if not isinstance(on_destroy, list) or not all(isinstance(k, str) for k in on_destroy):
        raise invalid("onSuccessDestroyEmail", "must be a list of ids")
    if arguments.get("ifInState") not in (None, FIXED_STATE):
        raise MethodError("stateMismatch")
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    emails: dict[str, str] = {}
    for creation_id, props in create.items():
        result = await _submit(context, props)
        if "type" in result:
            not_created[creation_id] = result
        else:
            created[creation_id] = result
            context.created_ids[creation_id] = result["id"]
            emails["#" + creation_id] = resolve_id(context, props.get("emailId"))
    response = {
        "accountId": context.account_id,
        "oldState": FIXED_STATE,
        "newState": FIXED_STATE,
        "created": created or None,
        "notCreated": not_created or None,
        "updated": None,
        "destroyed": None,
        "notUpdated": {i: set_error("cannotUnsend", "submissions are final") for i in update} or None,
        "notDestroyed": {i: set_error("notFound") for i in destroy} or None,
    }
    email_update = {emails[k]: v for k, v in on_update.items() if k in emails}
    email_destroy = [emails[k] for k in on_destroy if k in emails]
    if email_update or email_destroy:
        from txmail.jmap.email import email_set

        implied = await email_set(
            context, {"accountId": context.account_id, "update": email_update, "destroy": email_destroy}
        )
        context.add_response("Email/set", implied)
    return response


# -- SearchSnippet/get (RFC 8621 section 5.1) ---------------------------------------------


def _terms(filter: Any, out: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``(condition, text)`` of a filter's text conditions (those a snippet highlights)."""
    if isinstance(filter, dict):
        if "conditions" in filter and filter.get("operator") != "NOT":
            for condition in filter.get("conditions") or ():
                _terms(condition, out)
        for key in ("text", "subject", "body"):
            if isinstance(filter.get(key), str) and filter[key].strip():
                out.append((key, filter[key].strip()))
    return out


def _mark(text: str, terms: list[str], window: int | None = None) -> str | None:
    """*text* HTML-escaped with each term in ``<mark>``; around the first hit only when *window*; ``None`` without one."""
    lower = text.casefold()
    hits = sorted((lower.find(t.casefold()), len(t)) for t in terms if lower.find(t.casefold()) >= 0)
    if not hits:
        return None
    start, end = 0, len(text)
    if window is not None:
        start = max(0, hits[0][0] - window // 4)
        end = min(len(text), start + window)
    out, at = [], start
    for pos, length in hits:
        if pos < at or pos + length > end:
            continue
        out.append(html.escape(text[at:pos]))
        out.append("<mark>" + html.escape(text[pos : pos + length]) + "</mark>")
        at = pos + length
    out.append(html.escape(text[at:end]))
    return "".join(out)


async def snippet_get(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``SearchSnippet/get`` (RFC 8621 section 5.1): the subject and a piece of the text with the search terms marked."""
    from txmail import mime
    from txmail.jmap.email import _metadata, read_email
    from txmail.jmap.query import _check_filter

    context.check_account(arguments)
    ids = arguments.get("emailIds")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise invalid("emailIds", "emailIds must be a list of ids")
    if len(ids) > context.limits.max_objects_in_get:
        raise MethodError("requestTooLarge", f"more than {context.limits.max_objects_in_get} ids")
    _check_filter(arguments.get("filter"))
    terms = _terms(arguments.get("filter"), [])
    subject_terms = [t for k, t in terms if k in ("text", "subject")]
    body_terms = [t for k, t in terms if k in ("text", "body")]
    view = await mail_view(context.store)
    found = [i for i in ids if i in view.emails]
    metadata = await _metadata(view, found)
    out = []
    for eid in found:
        md = metadata.get(eid)
        subject = bodies.header_value(md.headers if md else (), "subject", "Text", False) or ""
        preview = None
        if body_terms:
            message = await read_email(view, eid)
            text = " ".join(
                mime._decode_text(*value) for kind, value in mime.text_parts(message or b"") if kind == "text"
            )
            preview = _mark(" ".join(text.split()), body_terms, 255)
        out.append({"emailId": eid, "subject": _mark(subject, subject_terms), "preview": preview})
    return {
        "accountId": context.account_id,
        "list": out,
        "notFound": [i for i in ids if i not in view.emails],
    }


SUBMISSION_METHODS = {
    "Identity/get": identity_get,
    "Identity/changes": fixed_changes,
    "Identity/set": identity_set,
    "EmailSubmission/get": submission_get,
    "EmailSubmission/changes": fixed_changes,
    "EmailSubmission/query": submission_query,
    "EmailSubmission/queryChanges": submission_query_changes,
    "EmailSubmission/set": submission_set,
}
METHODS = {"SearchSnippet/get": snippet_get}
