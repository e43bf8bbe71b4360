"""
The Email methods of RFC 8621 section 4 over the mailbox contract:
``Email/get``, ``Email/changes``, ``Email/query`` and ``Email/queryChanges``
(:mod:`txmail.jmap.query`), ``Email/set``, ``Email/import``,
``Email/parse`` and ``Email/copy``.

* One Email is every message of one EMAILID (see :mod:`txmail.jmap.state`).
  Its properties come from its first copy (in mailbox order): the copies
  share their octets.  Its ``keywords`` are the union of its copies' IMAP
  flags: ``\\Seen``, ``\\Flagged``, ``\\Answered`` and ``\\Draft`` are
  ``$seen``, ``$flagged``, ``$answered`` and ``$draft``, other keywords are
  shown in lower case (RFC 8621 section 4.1.1: keywords are
  case-insensitive), ``\\Deleted`` is not shown.  Setting ``keywords`` sets
  the flags of every copy, keeping ``\\Deleted`` and a keyword's IMAP
  spelling where only its case differs.
* ``mailboxIds`` changes are IMAP operations: a mailbox added and one
  removed is a MOVE (:meth:`txmail.interfaces.IMailbox.move`, which keeps
  the EMAILID), further added ones are COPYs, further removed ones a
  ``\\Deleted`` and UID EXPUNGE of that copy only.  Destroying an Email
  expunges each copy the same way.
* Header properties and ``hasAttachment`` (section 4.1.4's
  ``attachments`` not empty, from the cached BODYSTRUCTURE) come from the
  store's cached metadata (:meth:`txmail.interfaces.IMailbox.get_metadata`),
  so an ``Email/get`` of them reads no message; ``preview`` (RFC 8970's,
  :func:`txmail.mime.preview`) is computed once an Email and kept, in the
  store's records where the mailbox keeps records
  (:class:`txmail.interfaces.IRecordCache`); the body parts and body values
  read the Email's first copy.
* ``Email/import`` appends an uploaded message; ``Email/parse`` reads an
  uploaded one (or an attached ``message/rfc822`` part); ``Email/copy``
  has nothing to copy between, a user having one account.
* ``blobId`` is the Email's id (the whole message), a part's is the Email's
  id, ``_`` and its part id (see :mod:`txmail.jmap.body`).
* ``Email/set`` create builds an RFC 5322 message (CRLF line ends, a
  ``Message-ID`` and ``Date`` added when missing, MIME structure from
  ``bodyStructure`` or from ``textBody``/``htmlBody``/``attachments``, with
  the octets of uploaded blobs from ``context.blobs``) and appends it to
  each of its mailboxes, as IMAP APPEND would: drafts are saved this way.

This module is sans-IO apart from the Deferreds the store returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from txmail import mime
from txmail.errors import NoSuchMailbox, NoSuchMessage
from txmail.interfaces import IMailbox, IRecordCache
from txmail.jmap import body as bodies
from txmail.jmap.common import (
    SetRun,
    check_if_in_state,
    get_ids,
    invalid,
    max_changes,
    optional_bool,
    resolve_id,
    set_arguments,
    unsigned,
)
from txmail.jmap.core import CallContext, MethodError, set_error
from txmail.jmap.state import MailView, email_changes, mail_view
from txmail.model import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, FlagMode, normalize_flags

__all__ = ["METHODS", "SORTS", "blob", "flags_to_keywords", "keyword_to_flag"]

#: The sorts of ``Email/query`` (RFC 8621 section 4.4.2), for the account capability.
SORTS = (
    "receivedAt", "size", "from", "to", "subject", "sentAt",
    "hasKeyword", "allInThreadHaveKeyword", "someInThreadHaveKeyword",
)  # fmt: skip

_KEYWORD_OF = {SEEN: "$seen", FLAGGED: "$flagged", ANSWERED: "$answered", DRAFT: "$draft"}
_FLAG_OF = {v: k for k, v in _KEYWORD_OF.items()}
_CONVENIENCE = {
    "messageId": ("message-id", "MessageIds"),
    "inReplyTo": ("in-reply-to", "MessageIds"),
    "references": ("references", "MessageIds"),
    "sender": ("sender", "Addresses"),
    "from": ("from", "Addresses"),
    "to": ("to", "Addresses"),
    "cc": ("cc", "Addresses"),
    "bcc": ("bcc", "Addresses"),
    "replyTo": ("reply-to", "Addresses"),
    "subject": ("subject", "Text"),
    "sentAt": ("date", "Date"),
}
_INDEX_PROPS = ("id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt")
_BODY_PROPS = (
    "bodyStructure",
    "textBody",
    "htmlBody",
    "attachments",
    "hasAttachment",
    "preview",
    "bodyValues",
)
DEFAULT_PROPERTIES = (
    "id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt", "messageId", "inReplyTo",
    "references", "sender", "from", "to", "cc", "bcc", "replyTo", "subject", "sentAt", "hasAttachment",
    "preview", "bodyValues", "textBody", "htmlBody", "attachments",
)  # fmt: skip
PROPERTIES = frozenset((*_INDEX_PROPS, *_CONVENIENCE, *_BODY_PROPS, "headers"))
BODY_PROPERTIES = frozenset(
    ("partId", "blobId", "size", "headers", "name", "type", "charset", "disposition", "cid", "language",
     "location", "subParts")
)  # fmt: skip
DEFAULT_BODY_PROPERTIES = (
    "partId", "blobId", "size", "name", "type", "charset", "disposition", "cid", "language", "location",
)  # fmt: skip


def flags_to_keywords(flags: Iterable[str]) -> dict[str, bool]:
    """The ``keywords`` of IMAP *flags* (see the module docstring)."""
    out = {}
    for flag in flags:
        keyword = _KEYWORD_OF.get(flag)
        if keyword is None:
            if flag.startswith("\\"):
                continue
            keyword = flag.lower()
        out[keyword] = True
    return out


def keyword_to_flag(keyword: str) -> str:
    """The IMAP flag of a JMAP keyword (``$seen`` is ``\\Seen``); ``ValueError`` when it cannot be one."""
    keyword = keyword.lower()
    flag = _FLAG_OF.get(keyword)
    if flag is not None:
        return flag
    if not keyword or len(keyword) > 255 or any(c in keyword for c in '(){]%*"\\') or not keyword.isascii():
        raise ValueError(keyword)
    if any(not 0x21 <= ord(c) <= 0x7E for c in keyword):
        raise ValueError(keyword)
    (flag,) = normalize_flags([keyword])
    return flag


def _new_flags(current: frozenset[str], keywords: set[str]) -> frozenset[str]:
    """The flags of a copy whose keywords become *keywords* (lower case): ``\\Deleted`` and spellings kept."""
    out = {DELETED} & current
    wanted = set(keywords)
    for flag in current:
        key = _KEYWORD_OF.get(flag)
        if key is None:
            if flag.startswith("\\"):
                continue
            key = flag.lower()
        if key in wanted:
            out.add(flag)
            wanted.discard(key)
    out.update(keyword_to_flag(k) for k in wanted)
    return frozenset(out)


# -- Email/get (RFC 8621 section 4.2) ------------------------------------------------------


def _check_properties(wanted: list[str], known: frozenset[str], argument: str) -> None:
    for prop in wanted:
        if prop in known:
            continue
        if prop.startswith("header:") and bodies.parse_header_property(prop) is not None:
            continue
        raise invalid(argument, f"unknown or unsupported property {prop}")


def _get_properties(
    arguments: dict[str, Any], argument: str, known: frozenset[str], default: Iterable[str]
) -> list[str]:
    wanted = arguments.get(argument)
    if wanted is None:
        return list(default)
    if not isinstance(wanted, list) or not all(isinstance(p, str) for p in wanted):
        raise invalid(argument, f"{argument} must be a list of names")
    _check_properties(wanted, known, argument)
    return list(dict.fromkeys(wanted))


async def _metadata(view: MailView, email_ids: list[str]) -> dict[str, Any]:
    """The cached metadata of Emails (their first copies), by Email id."""
    wanted: dict[str, dict[int, str]] = {}
    for eid in email_ids:
        box, info = view.emails[eid][0]
        wanted.setdefault(box.id, {})[info.uid] = eid
    out = {}
    for box_id, uids in wanted.items():
        found = await view.boxes[box_id].opened.get_metadata(list(uids))
        for uid, md in found.items():
            out[uids[uid]] = md
    return out


async def read_email(view: MailView, email_id: str) -> bytes | None:
    """The octets of an Email (its first copy that can still be read), or ``None``."""
    for box, info in view.emails.get(email_id, ()):
        try:
            return bytes(await view.boxes[box.id].opened.read_message(info.uid))
        except (NoSuchMessage, NoSuchMailbox):
            continue
    return None


def _body_options(arguments: dict[str, Any]) -> tuple[bool, bool, bool, int]:
    return (
        optional_bool(arguments, "fetchTextBodyValues"),
        optional_bool(arguments, "fetchHTMLBodyValues"),
        optional_bool(arguments, "fetchAllBodyValues"),
        unsigned(arguments, "maxBodyValueBytes", 0) or 0,
    )


_PARSED_PROPS = frozenset(("bodyStructure", "textBody", "htmlBody", "attachments", "bodyValues"))
#: The kind of the records (:class:`txmail.interfaces.IRecordCache`) keeping previews.
PREVIEW_RECORDS = "jmap-preview-1"


def body_properties(
    email_id: str,
    message: bytes,
    wanted: list[str],
    body_props: list[str],
    options: tuple[bool, bool, bool, int],
) -> dict[str, Any]:
    """The body properties of section 4.1.4 of one message that need its octets parsed."""
    root, _fields = bodies.parse_message(message)
    text, html, attachments = bodies.classify(root)
    out: dict[str, Any] = {}
    if "bodyStructure" in wanted:
        out["bodyStructure"] = root.to_json(email_id, message, body_props)
    if "textBody" in wanted:
        out["textBody"] = [p.to_json(email_id, message, body_props) for p in text]
    if "htmlBody" in wanted:
        out["htmlBody"] = [p.to_json(email_id, message, body_props) for p in html]
    if "attachments" in wanted:
        out["attachments"] = [p.to_json(email_id, message, body_props) for p in attachments]
    if "bodyValues" in wanted:
        fetch_text, fetch_html, fetch_all, max_bytes = options
        parts: list[bodies.Part] = []
        if fetch_all:
            parts = [p for p in root.leaves() if p.type.startswith("text/")]
        else:
            parts = (text if fetch_text else []) + (html if fetch_html else [])
        values = {}
        for part in parts:
            if part.part_id is not None and part.type.startswith("text/") and part.part_id not in values:
                values[part.part_id] = bodies.body_value(part, message, max_bytes)
        out["bodyValues"] = values
    return out


def has_attachment(md: Any) -> bool:
    """``hasAttachment``: section 4.1.4's ``attachments`` is not empty, from the cached BODYSTRUCTURE."""
    return md is not None and bool(bodies.classify(bodies.structure_parts(md.body_structure))[2])


async def previews(view: MailView, email_ids: list[str]) -> dict[str, str]:
    """
    The ``preview`` of Emails (:func:`txmail.mime.preview`, RFC 8970's),
    computed once: kept by EMAILID in memory, and in the first copy's
    mailbox's records when it keeps records (:class:`txmail.interfaces.IRecordCache`,
    across restarts).
    """
    known = view.cache.previews
    out = {e: known[e] for e in email_ids if e in known}
    wanted: dict[str, dict[int, str]] = {}
    for eid in email_ids:
        if eid not in out and eid in view.emails:
            box, info = view.emails[eid][0]
            wanted.setdefault(box.id, {})[info.uid] = eid
    for box_id, uids in wanted.items():
        records = IRecordCache(view.boxes[box_id].mailbox, None)
        found = await records.cached_records(PREVIEW_RECORDS, list(uids)) if records is not None else {}
        new = {}
        for uid, eid in uids.items():
            record = found.get(uid)
            if record is not None and len(record) == 2 and record[0] == "p":
                text = str(record[1])
            else:
                message = await read_email(view, eid)
                if message is None:
                    continue
                text = mime.preview(message)
                new[uid] = ("p", text)
            known[eid] = out[eid] = text
        if new and records is not None:
            await records.cache_records(PREVIEW_RECORDS, new)
    return out


async def email_get(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Email/get`` (RFC 8621 section 4.2)."""
    ids = get_ids(context, arguments)
    wanted = _get_properties(arguments, "properties", PROPERTIES, DEFAULT_PROPERTIES)
    if "id" not in wanted:
        wanted.insert(0, "id")
    body_props = _get_properties(arguments, "bodyProperties", BODY_PROPERTIES, DEFAULT_BODY_PROPERTIES)
    options = _body_options(arguments)
    view = await mail_view(context.store)
    if ids is None:
        if len(view.emails) > context.limits.max_objects_in_get:
            raise MethodError("requestTooLarge", "more Emails than maxObjectsInGet: give ids")
        ids = list(view.emails)
    found_ids = [i for i in ids if i in view.emails]
    not_found = [i for i in ids if i not in view.emails]
    needs_headers = any(
        p in _CONVENIENCE or p in ("headers", "hasAttachment") or p.startswith("header:") for p in wanted
    )
    needs_body = any(p in _PARSED_PROPS for p in wanted)
    metadata = await _metadata(view, found_ids) if needs_headers else {}
    texts = await previews(view, found_ids) if "preview" in wanted else {}
    threads = await view.thread_ids(found_ids) if "threadId" in wanted else {}
    result = []
    for eid in found_ids:
        copies = view.emails[eid]
        _box, info = copies[0]
        md = metadata.get(eid)
        fields = md.headers if md is not None else ()
        obj: dict[str, Any] = {}
        for prop in wanted:
            if prop == "id" or prop == "blobId":
                obj[prop] = eid
            elif prop == "threadId":
                obj[prop] = threads.get(eid)
            elif prop == "mailboxIds":
                obj[prop] = {b.id: True for b, _ in copies}
            elif prop == "keywords":
                obj[prop] = flags_to_keywords(view.keywords(eid))
            elif prop == "size":
                obj[prop] = info.size
            elif prop == "receivedAt":
                obj[prop] = bodies.utc_date(info.internal_date)
            elif prop in _CONVENIENCE:
                name, form = _CONVENIENCE[prop]
                obj[prop] = bodies.header_value(fields, name, form, False)
            elif prop == "headers":
                obj[prop] = [{"name": n, "value": bodies.decode_raw(v)} for n, v in fields]
            elif prop.startswith("header:"):
                obj[prop] = bodies.header_property(fields, prop)
            elif prop == "hasAttachment":
                obj[prop] = has_attachment(md)
            elif prop == "preview":
                obj[prop] = texts.get(eid, "")
        if needs_body:
            message = await read_email(view, eid)
            if message is None:
                not_found.append(eid)
                continue
            obj.update(body_properties(eid, message, wanted, body_props, options))
        result.append({p: obj[p] for p in wanted if p in obj})
    return {
        "accountId": context.account_id,
        "state": view.email_state(),
        "list": result,
        "notFound": not_found,
    }


async def blob(context: CallContext, blob_id: str) -> bytes | None:
    """The octets of a blob id of this module (a whole message, or a part decoded), or ``None``."""
    if not isinstance(blob_id, str):
        return None
    email_id, part_id = bodies.split_blob_id(blob_id)
    view = await mail_view(context.store)
    message = await read_email(view, email_id)
    if message is None:
        return None
    if part_id is None:
        return message
    root, _ = bodies.parse_message(message)
    for part in root.leaves():
        if part.part_id == part_id:
            return part.content(message)
    return None


# -- Email/changes (RFC 8621 section 4.3) --------------------------------------------------


async def email_changes_method(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Email/changes`` (see :func:`txmail.jmap.state.email_changes`)."""
    context.check_account(arguments)
    limit = max_changes(arguments)
    view = await mail_view(context.store)
    changes = await email_changes(view, arguments.get("sinceState"), limit)
    return {
        "accountId": context.account_id,
        "oldState": arguments["sinceState"],
        "newState": changes.new_state,
        "hasMoreChanges": changes.has_more,
        "created": changes.created,
        "updated": changes.updated,
        "destroyed": changes.destroyed,
    }


# -- Email/set (RFC 8621 section 4.6) ------------------------------------------------------


def _patch_set(
    context: CallContext, current: set[str], patch: dict[str, Any], prop: str, check: Any
) -> set[str] | dict[str, Any]:
    """Apply the ``prop`` and ``prop/key`` members of *patch* to *current*; a SetError on bad input."""
    out = set(current)
    if prop in patch:
        value = patch[prop]
        if not isinstance(value, dict) or not all(v is True for v in value.values()):
            return set_error("invalidProperties", f"{prop} must map to true", properties=[prop])
        out = {check(resolve_id(context, k)) for k in value}
    for key, value in patch.items():
        if not key.startswith(prop + "/"):
            continue
        if prop in patch:
            return set_error("invalidPatch", f"{prop} and {key} both patched", properties=[key])
        item = check(resolve_id(context, key[len(prop) + 1 :]))
        if value is True:
            out.add(item)
        elif value is None:
            out.discard(item)
        else:
            return set_error("invalidProperties", f"{key} must be true or null", properties=[key])
    return out


def _keyword(k: str) -> str:
    keyword_to_flag(k)  # ValueError for a keyword IMAP cannot hold
    return k.lower()


async def _set_keywords(view: MailView, email_id: str, keywords: set[str]) -> None:
    for box, info in view.emails[email_id]:
        new = _new_flags(info.flags, keywords)
        if new != info.flags:
            await view.boxes[box.id].opened.set_flags([info.uid], new, FlagMode.REPLACE)


async def _remove_copy(mailbox: IMailbox, uid: int) -> None:
    """Expunge one message: ``\\Deleted`` on it alone, then UID EXPUNGE of it alone."""
    await mailbox.set_flags([uid], [DELETED], FlagMode.ADD)
    await mailbox.expunge([uid])


async def _set_mailboxes(view: MailView, email_id: str, targets: set[str]) -> None:
    copies = {box.id: (view.boxes[box.id].opened, info.uid) for box, info in view.emails[email_id]}
    add = [t for t in sorted(targets) if t not in copies]
    remove = [c for c in sorted(copies) if c not in targets]
    if add and remove:
        # A MOVE (RFC 6851) for the first pair: the copy keeps its EMAILID.
        mailbox, uid = copies.pop(remove.pop(0))
        target = view.boxes[add.pop(0)].opened
        pairs = await mailbox.move([uid], target)
        for _, new_uid in pairs:
            copies[""] = (target, new_uid)
    if add and copies:
        mailbox, uid = next(iter(copies.values()))
        for box_id in add:
            await mailbox.copy([uid], view.boxes[box_id].opened)
    for box_id in remove:
        mailbox, uid = copies[box_id]
        await _remove_copy(mailbox, uid)


_IMMUTABLE = PROPERTIES - {"keywords", "mailboxIds"}


async def _update_one(
    context: CallContext, view: MailView, email_id: str, patch: dict[str, Any]
) -> dict[str, Any] | None:
    if email_id not in view.emails:
        return set_error("notFound")
    for key in patch:
        base = key.split("/", 1)[0]
        if base not in ("keywords", "mailboxIds"):
            return set_error("invalidProperties", f"{base} cannot be changed", properties=[key])
    current_keywords = set(flags_to_keywords(view.keywords(email_id)))
    try:
        keywords = _patch_set(context, current_keywords, patch, "keywords", _keyword)
    except ValueError:
        return set_error("invalidProperties", "not a valid keyword", properties=["keywords"])
    if isinstance(keywords, dict):
        return keywords

    def mailbox(box_id: Any) -> str:
        if not isinstance(box_id, str) or box_id not in view.boxes or view.boxes[box_id].status is None:
            raise KeyError(box_id)
        return box_id

    current_boxes = {b.id for b, _ in view.emails[email_id]}
    try:
        targets = _patch_set(context, current_boxes, patch, "mailboxIds", mailbox)
    except KeyError:
        return set_error("invalidProperties", "no such mailbox", properties=["mailboxIds"])
    if isinstance(targets, dict):
        return targets
    if not targets:
        return set_error("invalidProperties", "an Email must be in a mailbox", properties=["mailboxIds"])
    if keywords != current_keywords:
        await _set_keywords(view, email_id, keywords)
    if targets != current_boxes:
        view = await mail_view(context.store)
        await _set_mailboxes(view, email_id, targets)
    return None


async def _destroy_one(view: MailView, email_id: str) -> dict[str, Any] | None:
    copies = view.emails.get(email_id)
    if not copies:
        return set_error("notFound")
    for box, info in copies:
        await _remove_copy(view.boxes[box.id].opened, info.uid)
    return None


async def email_set(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Email/set`` (RFC 8621 section 4.6)."""
    from txmail.jmap.compose import create_email

    create, update, destroy = set_arguments(context, arguments)
    view = await mail_view(context.store)
    old_state = view.email_state()
    check_if_in_state(arguments, old_state)
    run = SetRun(context, view, lambda: mail_view(context.store))
    await run.create(create, lambda view, props: create_email(context, view, props))
    await run.update(update, lambda view, email_id, patch: _update_one(context, view, email_id, patch))
    await run.destroy(destroy, _destroy_one)
    return run.response(old_state, run.view.email_state())


# -- Email/import, Email/parse, Email/copy (RFC 8621 sections 4.7 to 4.9) ------------------


async def email_import(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Email/import`` (RFC 8621 section 4.8): uploaded messages appended to their mailboxes."""
    from txmail.jmap.compose import import_email

    context.check_account(arguments)
    emails = arguments.get("emails")
    if not isinstance(emails, dict):
        raise invalid("emails", "emails must map creation ids to EmailImport objects")
    if len(emails) > context.limits.max_objects_in_set:
        raise MethodError("requestTooLarge", f"more than {context.limits.max_objects_in_set} Emails")
    view = await mail_view(context.store)
    old_state = view.email_state()
    check_if_in_state(arguments, old_state)
    run = SetRun(context, view, lambda: mail_view(context.store))
    await run.create(emails, lambda view, props: import_email(context, view, props))
    return {
        "accountId": context.account_id,
        "oldState": old_state,
        "newState": run.view.email_state(),
        "created": run.created or None,
        "notCreated": run.not_created or None,
    }


PARSE_DEFAULT = (
    "messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc", "replyTo", "subject",
    "sentAt", "hasAttachment", "preview", "bodyValues", "textBody", "htmlBody", "attachments",
)  # fmt: skip


def parse_properties(
    message: bytes,
    blob_id: str,
    wanted: list[str],
    body_props: list[str],
    options: tuple[bool, bool, bool, int],
) -> dict[str, Any]:
    """The Email of the octets *message* (``Email/parse``): its ``id``, mailboxes, keywords and thread null."""
    md = mime.parse_metadata(message)
    out: dict[str, Any] = {}
    for prop in wanted:
        if prop in ("id", "threadId", "mailboxIds", "keywords", "receivedAt"):
            out[prop] = None
        elif prop == "blobId":
            out[prop] = blob_id
        elif prop == "size":
            out[prop] = len(message)
        elif prop in _CONVENIENCE:
            name, form = _CONVENIENCE[prop]
            out[prop] = bodies.header_value(md.headers, name, form, False)
        elif prop == "headers":
            out[prop] = [{"name": n, "value": bodies.decode_raw(v)} for n, v in md.headers]
        elif prop.startswith("header:"):
            out[prop] = bodies.header_property(md.headers, prop)
        elif prop == "hasAttachment":
            out[prop] = has_attachment(md)
        elif prop == "preview":
            out[prop] = mime.preview(message)
    if any(p in _PARSED_PROPS for p in wanted):
        # Part blob ids of a parsed blob are not kept: they are null.
        parsed = body_properties(blob_id, message, wanted, [p for p in body_props if p != "blobId"], options)
        out.update(parsed)
    return {p: out[p] for p in wanted if p in out}


async def email_parse(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Email/parse`` (RFC 8621 section 4.9): blobs (uploads, attached messages) read as Emails."""
    from txmail.jmap.compose import blob_bytes

    context.check_account(arguments)
    blob_ids = arguments.get("blobIds")
    if not isinstance(blob_ids, list) or not all(isinstance(b, str) for b in blob_ids):
        raise invalid("blobIds", "blobIds must be a list of ids")
    if len(blob_ids) > context.limits.max_objects_in_get:
        raise MethodError("requestTooLarge", f"more than {context.limits.max_objects_in_get} blobs")
    wanted = _get_properties(arguments, "properties", PROPERTIES, PARSE_DEFAULT)
    body_props = _get_properties(arguments, "bodyProperties", BODY_PROPERTIES, DEFAULT_BODY_PROPERTIES)
    options = _body_options(arguments)
    parsed: dict[str, Any] = {}
    not_found: list[str] = []
    not_parsable: list[str] = []
    for blob_id in blob_ids:
        data = await blob_bytes(context, blob_id)
        if data is None:
            not_found.append(blob_id)
            continue
        if not data.strip():
            not_parsable.append(blob_id)
            continue
        parsed[blob_id] = parse_properties(data, blob_id, wanted, body_props, options)
    return {
        "accountId": context.account_id,
        "parsed": parsed or None,
        "notParsable": not_parsable or None,
        "notFound": not_found or None,
    }


async def email_copy(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """
    ``Email/copy`` (RFC 8621 section 4.7; RFC 8620 section 5.4): between
    two accounts, and a user has one, so the source account is either this
    one (which section 5.4 forbids: ``invalidArguments``; ``Email/set``'s
    ``mailboxIds`` copies within an account) or not one of the user's.
    """
    context.check_account(arguments)
    if arguments.get("fromAccountId") == context.account_id:
        raise invalid("fromAccountId", "fromAccountId must differ from accountId: use Email/set mailboxIds")
    raise MethodError("fromAccountNotFound")


METHODS: dict[str, Any] = {
    "Email/get": email_get,
    "Email/changes": email_changes_method,
    "Email/set": email_set,
    "Email/import": email_import,
    "Email/parse": email_parse,
    "Email/copy": email_copy,
}
