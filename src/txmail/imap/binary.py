"""
BINARY (RFC 3516): the FETCH items ``BINARY[section-part]<partial>``,
``BINARY.PEEK`` and ``BINARY.SIZE``, which give a body part with its
Content-Transfer-Encoding undone.

* ``BINARY[]`` is the whole message as stored (it is not a leaf: no
  encoding to undo).  ``BINARY[1.2]`` is part 1.2's body, decoded by the
  ``Content-Transfer-Encoding`` of that part's MIME header (for part 1 of a
  single-part message: the message header).  ``7bit``, ``8bit``,
  ``binary`` or none: as it is; ``base64`` and ``quoted-printable``:
  decoded; anything else, or base64 that cannot be decoded: the command
  fails with ``NO [UNKNOWN-CTE]`` (RFC 3516 section 4.2), which
  :func:`check` raises before any response of the message is emitted.
* A part that does not exist is the empty string, as ``BODY[...]``'s.
* The data is a ``literal8`` (``~{n}``) when it holds a NUL octet, a
  plain literal otherwise (RFC 3516 section 4.2: literal8 is for content
  IMAP4rev1's literal cannot carry), ``""`` when empty.
* ``BINARY.PEEK`` and ``BINARY.SIZE`` do not set ``\\Seen``; the parser
  marks ``BINARY.SIZE`` as a peek.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence

from txmail import mime
from txmail.imap.types import FetchAttribute

__all__ = ["BINARY_ITEMS", "UnknownCTE", "binary_items", "check", "decoded_part", "render_item"]

#: The FETCH item names of RFC 3516 (``BINARY.PEEK`` is parsed as ``BINARY`` with ``peek``).
BINARY_ITEMS = frozenset({"BINARY", "BINARY.SIZE"})

_IDENTITY = frozenset({"", "7BIT", "8BIT", "BINARY"})


class UnknownCTE(ValueError):
    """A part's Content-Transfer-Encoding is not one this server can undo (RFC 3516 section 4.2)."""


def _encoding(header: bytes) -> str:
    """The ``Content-Transfer-Encoding`` of a MIME header section, upper-cased, ``""`` without one."""
    _, fields = mime.parse_header_section(header)
    for name, value in fields:
        if name.lower() == "content-transfer-encoding":
            return " ".join(value.split()).upper()
    return ""


def decoded_part(message: mime.ParsedMessage, part: tuple[int, ...]) -> bytes:
    """
    The octets of ``BINARY[part]``: the part's body with its transfer
    encoding undone; the message itself for ``()``.

    Raises:
        UnknownCTE: an encoding that is not identity, base64 or quoted-printable,
            or base64 that is not valid.
    """
    if not part:
        return message.data
    spec = ".".join(str(p) for p in part)
    body = message.section(spec)
    encoding = _encoding(message.section(spec + ".MIME"))
    if encoding in _IDENTITY:
        return body
    if encoding == "BASE64":
        try:
            return binascii.a2b_base64(body)
        except binascii.Error:
            raise UnknownCTE("Invalid base64 content") from None
    if encoding == "QUOTED-PRINTABLE":
        return binascii.a2b_qp(body)
    raise UnknownCTE(f"Unknown Content-Transfer-Encoding {encoding}")


def binary_items(items: Sequence[FetchAttribute]) -> tuple[FetchAttribute, ...]:
    """The BINARY items among a FETCH's *items*."""
    return tuple(i for i in items if i.name in BINARY_ITEMS)


def check(message: bytes, items: Sequence[FetchAttribute]) -> None:
    """Raise :class:`UnknownCTE` if a BINARY item of *items* cannot be answered for *message*."""
    parsed = mime.ParsedMessage(message)
    for part in {i.section.part for i in items if i.section is not None}:
        decoded_part(parsed, part)


def render_item(item: FetchAttribute, message: mime.ParsedMessage | None) -> bytes | tuple[bytes, bytes]:
    """
    One BINARY ``msg-att`` (RFC 3516 section 4.2), a literal's octets kept
    apart as in :mod:`txmail.imap.fetch`::

        "BINARY" section-binary ["<" number ">"] SP (nstring / literal8)
        "BINARY.SIZE" section-binary SP number
    """
    if message is None:
        raise ValueError(f"{item.name} needs the message octets")
    part = item.section.part if item.section is not None else ()
    label = b"[" + ".".join(str(p) for p in part).encode("ascii") + b"]"
    data = decoded_part(message, part)
    if item.name == "BINARY.SIZE":
        return b"BINARY.SIZE" + label + b" %d" % len(data)
    label = b"BINARY" + label
    if item.partial is not None:
        offset, length = item.partial
        data = data[offset : offset + length]
        label += b"<%d>" % offset
    if not data:
        return label + b' ""'
    marker = b"~{%d}\r\n" if b"\x00" in data else b"{%d}\r\n"
    return (label + b" " + marker % len(data), data)
