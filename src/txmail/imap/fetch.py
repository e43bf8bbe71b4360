"""
The untagged FETCH response: parsed fetch attributes in, wire octets out
(RFC 3501 section 6.4.5, the FETCH command, and section 7.4.2, the FETCH
response).

Theory of operation
===================

A FETCH runs in two steps for every message:

1. :func:`fetch_needs` looks at the attributes once per command and says
   what the session must load besides the cheap :class:`MessageInfo`: the
   cached :class:`MessageMetadata` (ENVELOPE, BODY, BODYSTRUCTURE and
   top-level ``HEADER.FIELDS``), the message octets (every other body
   section and the ``RFC822*`` items), and whether the fetch sets ``\\Seen``.
2. :func:`render_fetch` turns the attributes and what was loaded into one
   ``* n FETCH (...)`` response, literals included.

Nothing here stores anything: setting ``\\Seen`` is the caller's job (it
then passes ``include_flags=True`` and an info holding the new flags), as
is claiming ``\\Recent`` (``recent=True``).

Implementation notes
====================

* Items come out in the order the client asked for them (RFC 3501 does
  not require it, clients find it easiest).  An implied ``UID`` (UID FETCH,
  RFC 3501 section 6.4.8) goes first, an implied ``FLAGS`` (implicit
  ``\\Seen``, RFC 3501 section 6.4.5) last; an item asked twice is sent once
  (``BODY.PEEK[x]`` and ``BODY[x]`` count as the same item).
* Body data (``BODY[...]``, ``RFC822``, ``RFC822.HEADER``, ``RFC822.TEXT``)
  is always a literal ``{n}\\r\\n...``, whatever its octets, except the empty
  string, which is ``""``.  Never ``NIL``: a section that does not exist is
  the empty string, as :func:`txmail.mime.extract_section` gives it.
* ``BODY`` without a section is ``BODYSTRUCTURE`` without extension data
  (RFC 3501 section 7.4.2: "A form of BODYSTRUCTURE without extension
  data"), cut from the cached tuple by :func:`basic_body_structure`.
* The response names a body section as the parser understood it
  (``BODY[1.HEADER.FIELDS (FROM TO)]``, header names upper-cased); a
  partial fetch shows only its origin, ``BODY[]<0>`` (RFC 3501 section
  7.4.2: "the origin octet is specified").  ``BODY.PEEK`` answers as
  ``BODY``.
* ENVELOPE and BODYSTRUCTURE are written by :func:`envelope` and
  :func:`body_structure` here, not by their namesakes in
  :mod:`txmail.imap.serialize`, which separate the addresses of a list with
  spaces that RFC 3501's ``1*address`` does not allow (also in the envelope
  of a MESSAGE/RFC822 part).
* Top-level ``HEADER.FIELDS(.NOT)`` comes from the cached header fields
  when metadata is given (no parse of the message); otherwise from the
  message octets.  Both give the same octets.
* Each other section parses the message with
  :func:`txmail.mime.extract_section`; ``BODY[]`` and ``RFC822`` are the
  octets as they are.

Deviation: message octets are sent as they are stored, so a message holding
NUL octets gives a literal IMAP4rev1 does not allow (``CHAR8`` excludes
NUL); ``BINARY[]`` (RFC 3516, :mod:`txmail.imap.binary`) sends them in a
literal8.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from txmail import mime
from txmail.imap import binary, serialize
from txmail.imap.types import FetchAttribute, Section
from txmail.model import MessageInfo, MessageMetadata

#: A record of a store's header lines (:meth:`txmail.interfaces.IHeaderLines.header_lines`),
#: given instead of the metadata when it answers every item (:func:`txmail.imap.columns.fetch_uses_lines`).
HeaderLines = tuple[str, str]


class Structures(NamedTuple):
    """
    A message's ENVELOPE, BODYSTRUCTURE and BODY as written in a response
    (after the item's name), given instead of the metadata when they are
    all a FETCH reads of it (:mod:`txmail.imap.structures`).
    """

    envelope: bytes
    body_structure: bytes
    body: bytes


#: What a FETCH renders a message's items from: its metadata, or one of the above.
Loaded = MessageMetadata | HeaderLines | Structures

__all__ = [
    "FetchNeeds",
    "basic_body_structure",
    "fetch_chunks",
    "fetch_needs",
    "render_fetch",
]

_RECENT = "\\Recent"

#: The ``RFC822*`` items as the body sections they stand for (RFC 3501 section 6.4.5).
_RFC822_SECTIONS = {
    "RFC822": Section(),
    "RFC822.HEADER": Section(text="HEADER"),
    "RFC822.TEXT": Section(text="TEXT"),
}

#: Names :func:`txmail.mime.extract_section` reads unquoted (its ``_NAME_RE``).
_PLAIN_NAME_RE = re.compile(r'^[^\s"()\\]+$')


@dataclass(frozen=True, slots=True)
class FetchNeeds:
    """
    What the session must load to answer a FETCH, beyond :class:`MessageInfo`.

    Attributes:
        metadata: ENVELOPE, BODY, BODYSTRUCTURE, THREADID (RFC 8474, from
            the header fields), or a top-level
            ``BODY[HEADER.FIELDS(.NOT) ...]`` (answered from
            :attr:`MessageMetadata.headers`) was asked.
        message: some other body section, ``RFC822``, ``RFC822.HEADER`` or
            ``RFC822.TEXT`` was asked: the full message octets are needed.
        sets_seen: a non-PEEK ``BODY[...]``, ``RFC822`` or ``RFC822.TEXT``
            was asked, which sets ``\\Seen`` (RFC 3501 section 6.4.5);
            ``RFC822.HEADER`` does not (it is ``BODY.PEEK[HEADER]``).
    """

    metadata: bool
    message: bool
    sets_seen: bool


def _is_metadata_headers(section: Section) -> bool:
    """Whether *section* is a top-level ``HEADER.FIELDS(.NOT)``, answered from the cached headers."""
    return not section.part and section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT")


def fetch_needs(items: Sequence[FetchAttribute]) -> FetchNeeds:
    """
    What :func:`render_fetch` needs for *items* (a FETCH command's
    attributes, macros already expanded).

    ``metadata`` and ``message`` are independent: a top-level
    ``HEADER.FIELDS`` asks for metadata even when another item needs the
    message too (:func:`render_fetch` then uses the metadata).
    """
    metadata = message = sets_seen = False
    for item in items:
        name = item.name
        if item.section is not None:
            if _is_metadata_headers(item.section):
                metadata = True
            else:
                message = True
            if not item.peek:
                sets_seen = True  # RFC 3501 section 6.4.5: "The \Seen flag is implicitly set"
        elif name in ("ENVELOPE", "BODY", "BODYSTRUCTURE", "THREADID"):
            metadata = True
        elif name == "PREVIEW":  # RFC 8970: made from the message text, does not set \\Seen
            message = True
        elif name in _RFC822_SECTIONS:
            message = True
            if name != "RFC822.HEADER":  # RFC822.HEADER is "BODY.PEEK[HEADER]"
                sets_seen = True
    return FetchNeeds(metadata=metadata, message=message, sets_seen=sets_seen)


def basic_body_structure(body: tuple[Any, ...]) -> tuple[Any, ...]:
    """
    *body* (a :mod:`txmail.mime` BODYSTRUCTURE tuple) without extension
    data, as ``BODY`` answers it (RFC 3501 section 7.4.2)::

        body-type-1part = (body-type-basic / body-type-msg / body-type-text)
                          [SP body-ext-1part]
        body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]

    A non-multipart part keeps its basic fields (type to size), plus
    ``lines`` for TEXT and ``envelope body lines`` for MESSAGE/RFC822, whose
    body is cut the same way; a multipart keeps its parts and subtype.
    """
    if body and isinstance(body[0], tuple):
        count = 0
        while count < len(body) and isinstance(body[count], tuple):
            count += 1
        parts = tuple(basic_body_structure(p) for p in body[:count])
        return (*parts, *body[count : count + 1])
    if isinstance(body[0], str) and body[0].upper() == "TEXT":
        return body[:8]
    if serialize.is_message_rfc822(body) and isinstance(body[8], tuple):
        return (*body[:8], basic_body_structure(body[8]), body[9])
    return body[:7]


def _names_for_extract(names: Sequence[str]) -> str:
    """A header-list as :func:`txmail.mime.extract_section` reads it (quoting odd names)."""
    out = []
    for name in names:
        if _PLAIN_NAME_RE.match(name):
            out.append(name)
        else:
            out.append('"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "(" + " ".join(out) + ")"


def _section_for_extract(section: Section) -> str:
    """*section* as the ``section`` string of :func:`txmail.mime.extract_section`."""
    head = str(Section(section.part, section.text))
    if section.fields:
        head += " " + _names_for_extract(section.fields)
    return head


@functools.lru_cache(maxsize=256)
def _section_label(section: Section) -> bytes:
    """
    The ``section-spec`` of a response item, header names as astrings::

        header-list = "(" header-fld-name *(SP header-fld-name) ")"
        header-fld-name = astring
    """
    head = str(Section(section.part, section.text)).encode("ascii")
    if section.fields:
        head += b" (" + b" ".join(serialize.astring(n) for n in section.fields) + b")"
    return head


def _literal(data: bytes) -> bytes | tuple[bytes, bytes]:
    """
    Body data: a literal, or ``""`` when empty (see the module docstring).
    A literal comes as (its ``{n}`` CRLF announcement, the octets), so that
    :func:`fetch_chunks` can hand the octets on without copying them.
    """
    if not data:
        return b'""'
    return (b"{%d}\r\n" % len(data), data)


def _labelled(label: bytes, body: bytes | tuple[bytes, bytes]) -> bytes | tuple[bytes, bytes]:
    """*label* SP *body*, keeping a literal's octets apart."""
    if isinstance(body, tuple):
        return (label + b" " + body[0], body[1])
    return label + b" " + body


def _section_data(
    section: Section,
    metadata: Loaded | None,
    message: mime.ParsedMessage | None,
) -> bytes:
    """The octets of ``BODY[section]`` (RFC 3501 section 6.4.5), before any partial."""
    if _is_metadata_headers(section) and metadata is not None:
        if type(metadata) is Structures:
            raise ValueError(f"BODY[{section}] needs the message metadata")
        if type(metadata) is tuple:
            # A record of the store's header lines (txmail.imap.columns.fetch_uses_lines).
            return mime.header_lines_fields(metadata, section.fields)  # type: ignore[arg-type]  # a tuple: HeaderLines
        return mime.header_fields(
            metadata,  # type: ignore[arg-type]  # neither HeaderLines nor Structures: MessageMetadata
            section.fields,
            exclude=section.text == "HEADER.FIELDS.NOT",
        )
    if message is None:
        raise ValueError(f"BODY[{section}] needs the message octets")
    if not section.part and section.text is None:
        return message.data
    return message.section(_section_for_extract(section))


def _flags(info: MessageInfo, recent: bool) -> bytes:
    """
    ``"FLAGS" SP "(" [flag-fetch *(SP flag-fetch)] ")"``: the flags sorted,
    then ``\\Recent``, the order :mod:`txmail.imap.view` uses for
    unsolicited FETCH responses.
    """
    memo = _FLAGS_RECENT if recent else _FLAGS_SHOWN
    flags = info.flags
    found = memo.get(flags)
    if found is None:
        shown = sorted(flags)
        if recent:
            shown.append(_RECENT)
        found = b"(" + " ".join(shown).encode("ascii") + b")"
        if len(memo) >= _FLAGS_MEMO:
            memo.clear()
        memo[flags] = found
    return found


#: :func:`_flags` of the flag sets seen (a mailbox has few distinct ones),
#: without and with ``\Recent``; emptied when it reaches ``_FLAGS_MEMO``.
_FLAGS_SHOWN: dict[frozenset[str], bytes] = {}
_FLAGS_RECENT: dict[frozenset[str], bytes] = {}
_FLAGS_MEMO = 1024


def _need_metadata(metadata: Loaded | None, name: str) -> MessageMetadata:
    if metadata is None or type(metadata) is tuple or type(metadata) is Structures:
        raise ValueError(f"{name} needs the message metadata")
    return metadata  # type: ignore[return-value]  # neither HeaderLines nor Structures: MessageMetadata


def _need_message(message: mime.ParsedMessage | None, name: str) -> mime.ParsedMessage:
    if message is None:
        raise ValueError(f"{name} needs the message octets")
    return message


def _string_item(text: str) -> bytes | tuple[bytes, bytes]:
    """``string`` (RFC 3501 section 9), a literal's octets kept apart."""
    data = serialize.string(text)
    if data.startswith(b"{"):
        head, _, octets = data.partition(b"\r\n")
        return (head + b"\r\n", octets)
    return data


def _render_item(
    item: FetchAttribute,
    info: MessageInfo,
    metadata: Loaded | None,
    message: mime.ParsedMessage | None,
    recent: bool,
) -> bytes | tuple[bytes, bytes]:
    """One ``msg-att`` of the response (RFC 3501 section 7.4.2); a literal's octets kept apart."""
    name = item.name
    if name in binary.BINARY_ITEMS:
        return binary.render_item(item, message)
    if item.section is not None:
        data = _section_data(item.section, metadata, message)
        label = b"BODY[" + _section_label(item.section) + b"]"
        if item.partial is not None:
            # RFC 3501 section 6.4.5: "if the starting octet is beyond the end
            # of the text, an empty string is returned"; 7.4.2: only the
            # origin octet is shown.
            offset, length = item.partial
            data = data[offset : offset + length]
            label += b"<%d>" % offset
        return _labelled(label, _literal(data))
    if name == "UID":
        return b"UID " + serialize.number(info.uid)
    if name == "FLAGS":
        return b"FLAGS " + _flags(info, recent)
    if name == "MODSEQ":
        # RFC 7162 section 3.1.4.2: "MODSEQ" SP "(" permsg-modsequence ")"
        return b"MODSEQ (%d)" % info.modseq
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + serialize.timestamp_date_time(info.internal_date)
    if name == "SAVEDATE":
        # RFC 8514 section 4.2: NIL when the store keeps no save date.
        if info.save_date is None:
            return b"SAVEDATE NIL"
        return b"SAVEDATE " + serialize.timestamp_date_time(info.save_date)
    if name == "EMAILID":
        # RFC 8474 section 5.1: "EMAILID" SP "(" objectid ")".  A store
        # without ids (not IObjectIds) has none to tell: NIL, as for THREADID.
        return (
            b"EMAILID NIL" if info.email_id is None else b"EMAILID (" + info.email_id.encode("ascii") + b")"
        )
    if name == "THREADID":
        # RFC 8474 section 5.2: "THREADID" SP ("(" objectid ")" / nil), from
        # the cached header fields (thread.py imports search, which imports
        # serialize, which imports this module: imported here).
        from txmail.imap.thread import thread_id

        found = thread_id(_need_metadata(metadata, name).headers, info.email_id)
        return b"THREADID NIL" if found is None else b"THREADID (" + found.encode("ascii") + b")"
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE " + serialize.number(info.size)
    if name == "PREVIEW":
        # RFC 8970 section 3.1: UTF-8 text; a literal when not ASCII (serialize.string).
        return _labelled(b"PREVIEW", _string_item(mime.preview(_need_message(message, name).data)))
    if name == "ENVELOPE":
        return b"ENVELOPE " + serialize.envelope(_need_metadata(metadata, name).envelope)
    if name == "BODYSTRUCTURE":
        return b"BODYSTRUCTURE " + serialize.body_structure(_need_metadata(metadata, name).body_structure)
    if name == "BODY":
        basic = basic_body_structure(_need_metadata(metadata, name).body_structure)
        return b"BODY " + serialize.body_structure(basic)
    if name in _RFC822_SECTIONS:
        return _labelled(
            name.encode("ascii"), _literal(_section_data(_RFC822_SECTIONS[name], metadata, message))
        )
    raise ValueError(f"unknown fetch attribute {name!r}")


def _key(item: FetchAttribute) -> tuple[str, Section | None, tuple[int, int] | None]:
    """Items with the same key give the same response item (PEEK or not)."""
    return (item.name, item.section, item.partial)


def render_fetch(
    seq: int,
    items: Sequence[FetchAttribute],
    info: MessageInfo,
    *,
    metadata: Loaded | None = None,
    message: bytes | None = None,
    include_uid: bool = False,
    include_flags: bool = False,
    recent: bool = False,
) -> bytes:
    """
    The untagged FETCH response for one message (RFC 3501 section 7.4.2)::

        message-data = nz-number SP "FETCH" SP msg-att

    Args:
        seq: the message sequence number.
        items: the attributes asked for, in order (macros expanded).
        info: the message's listing; its flags are the ones to show (after
            any implicit ``\\Seen``).
        metadata: the cached metadata; needed when :func:`fetch_needs` says so.
        message: the message octets; needed when :func:`fetch_needs` says so.
        include_uid: add ``UID`` first unless asked (UID FETCH, RFC 3501
            section 6.4.8: "server implementations MUST implicitly include
            the UID message data item as part of any FETCH response caused by
            a UID command").
        include_flags: add ``FLAGS`` last unless asked, because this fetch
            just set ``\\Seen`` (RFC 3501 section 6.4.5: "if this causes the
            flags to change, they SHOULD be included as part of the FETCH
            responses").
        recent: the session sees the message as ``\\Recent``; shown in FLAGS.

    Returns:
        ``* seq FETCH (...)\\r\\n`` with every literal inside.

    Raises:
        ValueError: an item needs *metadata* or *message* and it was not given
            (a programming error of the caller), or an unknown attribute.
    """
    return b"".join(
        fetch_chunks(
            seq,
            items,
            info,
            metadata=metadata,
            message=message,
            include_uid=include_uid,
            include_flags=include_flags,
            recent=recent,
        )
    )


def fetch_chunks(
    seq: int,
    items: Sequence[FetchAttribute],
    info: MessageInfo,
    *,
    metadata: Loaded | None = None,
    message: bytes | None = None,
    include_uid: bool = False,
    include_flags: bool = False,
    recent: bool = False,
) -> list[bytes]:
    """
    :func:`render_fetch` as a list of pieces to write one after the other:
    a literal's octets are a piece of their own, the very object sliced
    from *message*, so a server streaming BODY[] does not copy each message
    into its response line (measured: a sixth of the time of ``UID FETCH
    1:* (BODY.PEEK[])``).
    """
    steps, fused = _compiled(items, include_uid, include_flags)
    if fused is not None:
        # Every item written directly: the whole response in one format.
        line = _fused_line(fused, seq, info, metadata, recent)
        if line is not None:
            return [line]
    chunks: list[bytes] = []
    text = [b"* %d FETCH (" % seq]
    parsed: mime.ParsedMessage | None = None
    for kind, item, head in steps:
        # The items every client asks of every message, written directly
        # (measured: about a third of the time of FETCH (UID FLAGS RFC822.SIZE)).
        if kind is _UID:
            text.append(head % info.uid)
            continue
        if kind is _SIZE:
            text.append(head % info.size)
            continue
        if kind is _FLAGS:
            text.append(head + _flags(info, recent))
            continue
        if kind is _DATE:
            text.append(head + serialize.timestamp_date_time(info.internal_date))
            continue
        if kind in _STRUCTURE_KINDS and type(metadata) is Structures:
            text.append(head + metadata[_STRUCTURE_KINDS[kind]])
            continue
        if kind is _HEADERS and metadata is not None and type(metadata) is not Structures:
            # A first sync's header fields (from the metadata or the store's header lines).
            data = _section_data(item.section, metadata, None)  # type: ignore[arg-type]  # neither None nor Structures: metadata or header lines
            if data and len(data) <= _JOINED_LITERAL:
                text += (head, b"{%d}\r\n" % len(data), data)
                continue
        if head[:1] == b" ":
            text.append(b" ")
        if parsed is None and message is not None:
            parsed = mime.ParsedMessage(message)  # parsed at most once for all sections
        rendered = _render_item(item, info, metadata, parsed, recent)
        if type(rendered) is tuple and len(rendered[1]) <= _JOINED_LITERAL:
            text += rendered  # a small literal (header fields): copied into the line
        elif isinstance(rendered, tuple):
            text.append(rendered[0])
            chunks.append(b"".join(text))
            chunks.append(rendered[1])
            text = []
        else:
            text.append(rendered)
    text.append(b")\r\n")
    chunks.append(b"".join(text))
    return chunks


def _fused_line(
    fused: _Fused, seq: int, info: MessageInfo, metadata: Loaded | None, recent: bool
) -> bytes | None:
    """
    The response from its :func:`_fuse` format; None when what it needs
    was not loaded so (header fields without *metadata*, structures not
    given as :class:`Structures`) or its header fields are not a small
    literal.
    """
    values = {b"seq": seq, b"uid": info.uid, b"size": info.size, b"flags": _flags(info, recent)}
    if fused.date:
        values[b"date"] = serialize.timestamp_date_time(info.internal_date)
    if fused.structures:
        if type(metadata) is not Structures:
            return None
        values[b"envelope"], values[b"bodystructure"], values[b"body"] = metadata
    section = fused.section
    if section is not None:
        if metadata is None or type(metadata) is Structures:
            return None
        data = _section_data(section, metadata, None)
        if not data or len(data) > _JOINED_LITERAL:
            return None
        values[b"length"] = len(data)
        values[b"data"] = data
    return fused.format % values


#: A row of :func:`batch_chunks`: ``(seq, info, metadata, message,
#: include_flags, recent)``, the arguments of :func:`fetch_chunks`.
FetchRow = tuple[int, MessageInfo, "Loaded | None", "bytes | None", bool, bool]


def batch_chunks(items: Sequence[FetchAttribute], include_uid: bool, rows: Iterable[FetchRow]) -> list[bytes]:
    """
    :func:`fetch_chunks` of each row, the pieces up to
    :data:`_JOINED_LITERAL` octets joined: a batch of a first sync's
    header fetches is one piece to write, and a big literal is still a
    piece of its own, not copied.
    """
    out: list[bytes] = []
    small: list[bytes] = []
    for seq, info, metadata, message, include_flags, recent in rows:
        fused = _compiled(items, include_uid, include_flags)[1]
        if fused is not None:
            line = _fused_line(fused, seq, info, metadata, recent)
            if line is not None:
                small.append(line)
                continue
        chunks = fetch_chunks(
            seq,
            items,
            info,
            metadata=metadata,
            message=message,
            include_uid=include_uid,
            include_flags=include_flags,
            recent=recent,
        )
        for chunk in chunks:
            if len(chunk) > _JOINED_LITERAL:
                if small:
                    out.append(b"".join(small))
                    small = []
                out.append(chunk)
            else:
                small.append(chunk)
    if small:
        out.append(b"".join(small))
    return out


#: What :func:`_steps` makes of each item: written directly (UID,
#: RFC822.SIZE, FLAGS, INTERNALDATE, top-level header fields without a
#: partial; ENVELOPE, BODYSTRUCTURE and BODY when given as
#: :class:`Structures`) or by :func:`_render_item`.
_UID, _SIZE, _FLAGS, _DATE, _HEADERS, _OTHER = "UID", "SIZE", "FLAGS", "DATE", "HEADERS", "OTHER"
_ENVELOPE, _BODYSTRUCTURE, _BODY = "ENVELOPE", "BODYSTRUCTURE", "BODY"
#: The structure kinds, by their place in :class:`Structures`.
_STRUCTURE_KINDS = {_ENVELOPE: 0, _BODYSTRUCTURE: 1, _BODY: 2}
#: The items written directly without a section, by name: their kind and label.
_DIRECT = {
    "UID": (_UID, b"UID %d"),
    "RFC822.SIZE": (_SIZE, b"RFC822.SIZE %d"),
    "FLAGS": (_FLAGS, b"FLAGS "),
    "INTERNALDATE": (_DATE, b"INTERNALDATE "),
    "ENVELOPE": (_ENVELOPE, b"ENVELOPE "),
    "BODYSTRUCTURE": (_BODYSTRUCTURE, b"BODYSTRUCTURE "),
    "BODY": (_BODY, b"BODY "),
}


@functools.lru_cache(maxsize=128)
def _steps(plan: tuple[FetchAttribute, ...]) -> tuple[tuple[str, FetchAttribute, bytes], ...]:
    """
    For each item of a plan: (its kind, the item, the text before its
    value: the separating space, then for the direct kinds the label).
    """
    steps = []
    for n, item in enumerate(plan):
        sep = b" " if n else b""
        section = item.section
        if section is None and item.name in _DIRECT:
            kind, label = _DIRECT[item.name]
            steps.append((kind, item, sep + label))
        elif (
            section is not None
            and item.partial is None
            and item.name not in binary.BINARY_ITEMS
            and _is_metadata_headers(section)
        ):
            steps.append((_HEADERS, item, sep + b"BODY[" + _section_label(section) + b"] "))
        else:
            steps.append((_OTHER, item, sep))
    return tuple(steps)


class _Fused(NamedTuple):
    """A whole response as one format (see :func:`_fuse`)."""

    format: bytes
    #: The header fields section it writes, if any.
    section: Section | None
    #: Whether it writes ENVELOPE, BODYSTRUCTURE or BODY (from :class:`Structures`).
    structures: bool
    #: Whether it writes INTERNALDATE.
    date: bool


#: The mapping key each direct kind's value is written from.
_FUSED_FIELDS = {
    _UID: b"%(uid)d",
    _SIZE: b"%(size)d",
    _FLAGS: b"%(flags)s",
    _DATE: b"%(date)s",
    _ENVELOPE: b"%(envelope)s",
    _BODYSTRUCTURE: b"%(bodystructure)s",
    _BODY: b"%(body)s",
    _HEADERS: b"{%(length)d}\r\n%(data)s",
}


@functools.lru_cache(maxsize=128)
def _fuse(steps: tuple[tuple[str, FetchAttribute, bytes], ...]) -> _Fused | None:
    """
    When every step is written directly, each kind once (so at most one
    header fields section): a format of the whole response, for a mapping
    of ``seq``, ``uid``, ``size``, ``flags``, ``date``, ``envelope``,
    ``bodystructure``, ``body``, ``length`` and ``data`` (the section's
    octets), the keys a format does not use being ignored.  Else None.
    """
    kinds = [kind for kind, _, _ in steps]
    if _OTHER in kinds or len(set(kinds)) != len(kinds):
        return None
    out = [b"* %(seq)d FETCH ("]
    section = None
    for kind, item, head in steps:
        if kind is _HEADERS:
            section = item.section
            out.append(head.replace(b"%", b"%%"))
        else:
            out.append(head.replace(b"%d", b""))
        out.append(_FUSED_FIELDS[kind])
    out.append(b")\r\n")
    structures = any(kind in _STRUCTURE_KINDS for kind in kinds)
    return _Fused(b"".join(out), section, structures, _DATE in kinds)


#: What :func:`_compiled` gives: the steps, and their fused format if any.
_Compiled = tuple[tuple[tuple[str, FetchAttribute, bytes], ...], _Fused | None]

#: The last one made, with the items object it was made for: a FETCH
#: renders every message with the same items object, so it is found by
#: identity, without hashing the attributes again for each message.
_last_compiled: tuple[object, bool, bool, _Compiled] = (None, False, False, ((), None))


def _compiled(items: Sequence[FetchAttribute], include_uid: bool, include_flags: bool) -> _Compiled:
    """The :func:`_steps` of the response's items, and their :func:`_fuse`."""
    global _last_compiled
    last = _last_compiled
    if last[0] is items and last[1] is include_uid and last[2] is include_flags:
        return last[3]
    steps = _steps(_plan(tuple(items), include_uid, include_flags))
    compiled = (steps, _fuse(steps))
    _last_compiled = (items, include_uid, include_flags, compiled)
    return compiled


#: Literals up to this many octets are joined into their response line:
#: one piece to write instead of three (a big one is a piece of its own).
_JOINED_LITERAL = 4096


@functools.lru_cache(maxsize=128)
def _plan(
    items: tuple[FetchAttribute, ...], include_uid: bool, include_flags: bool
) -> tuple[FetchAttribute, ...]:
    """The items of one response, in order, implied ones added, repeats dropped (same for every message)."""
    wanted = list(items)
    names = {i.name for i in wanted if i.section is None}
    if include_uid and "UID" not in names:
        wanted.insert(0, FetchAttribute("UID"))
    if include_flags and "FLAGS" not in names:
        wanted.append(FetchAttribute("FLAGS"))
    seen: set[tuple[str, Section | None, tuple[int, int] | None]] = set()
    plan = []
    for item in wanted:
        key = _key(item)
        if key not in seen:
            seen.add(key)
            plan.append(item)
    return tuple(plan)
