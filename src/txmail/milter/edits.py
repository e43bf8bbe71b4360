"""
The header edits a milter asks for at the end of a message, applied to the
client's header section (each field with its CRLF, no empty line), as
:meth:`txmail.policy.hooks.Verdict.edit_headers` expects.

Indexes follow Sendmail's libmilter:

* SMFIR_ADDHEADER appends the field at the end of the header section.
* SMFIR_INSHEADER inserts it before the *index*-th field (0: at the top; an
  index past the end appends).  The milter never saw our own trace fields
  (``Return-Path:``, ``Received:``), which stay above everything it adds.
* SMFIR_CHGHEADER replaces the *index*-th field of that name (1-based,
  names compared without case; 0 counts as 1, as Postfix does); an empty
  value deletes it; a missing one is appended (unless the value is empty).

Edits apply in the order the milter sent them, each to the result of the
one before (as Sendmail and Postfix do).

A milter's values come with folding line breaks as LF or CRLF; they are
made CRLF and checked with :func:`txmail.policy.hooks.header_field`, so a
milter cannot end the header section or smuggle a field of its own.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from txmail.milter.protocol import AddHeader, ChangeHeader, InsertHeader, split_fields
from txmail.policy.hooks import header_field

__all__ = ["apply_header_edits", "milter_field"]

_LINE_END = re.compile(rb"\r\n|\r|\n")


def milter_field(name: bytes, value: bytes, *, leading_space: bool = False) -> bytes:
    """
    One CRLF-ended header field from a milter's *name* and *value*.  With
    *leading_space* (SMFIP_HDR_LEADSPC) the value is taken as is after the
    colon; without, a space is put after the colon, as Sendmail does.

    Raises:
        ValueError: a bad name, or a value with a line break that is not
            folding, or a NUL.
    """
    value = _LINE_END.sub(b"\r\n", value)
    if not leading_space:
        return header_field(name.decode("ascii"), value)
    if value.startswith(b" "):
        return header_field(name.decode("ascii"), value[1:])
    # No space after the colon (or a tab): check the value as if it had one.
    checked = header_field(name.decode("ascii"), b" " + value)
    return name + b":" + checked[len(name) + 3 :]


def _name_of(field: bytes) -> bytes:
    return field.partition(b":")[0].rstrip(b" \t").lower()


def apply_header_edits(
    section: bytes,
    edits: Sequence[AddHeader | InsertHeader | ChangeHeader],
    *,
    leading_space: bool = False,
) -> bytes:
    """
    *section* with the milter's *edits* applied (see the module notes).

    Raises:
        ValueError: an edit carries an invalid field (check them first with
            :func:`milter_field` to refuse them before the message is taken).
    """
    fields = split_fields(section)
    for edit in edits:
        if isinstance(edit, AddHeader):
            fields.append(milter_field(edit.name, edit.value, leading_space=leading_space))
        elif isinstance(edit, InsertHeader):
            index = min(edit.index, len(fields))
            fields.insert(index, milter_field(edit.name, edit.value, leading_space=leading_space))
        else:
            wanted = edit.name.lower()
            occurrence = max(edit.index, 1)
            position = None
            for i, existing in enumerate(fields):
                if _name_of(existing) == wanted:
                    occurrence -= 1
                    if occurrence == 0:
                        position = i
                        break
            if not edit.value:
                if position is not None:
                    del fields[position]
            elif position is not None:
                fields[position] = milter_field(edit.name, edit.value, leading_space=leading_space)
            else:
                fields.append(milter_field(edit.name, edit.value, leading_space=leading_space))
    return b"".join(fields)
