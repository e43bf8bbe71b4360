"""
PREVIEW (RFC 8970): ``FETCH PREVIEW`` and ``FETCH PREVIEW (LAZY)``.

* The text is :func:`txmail.mime.preview`: at most 256 characters of the
  message's first text part (TEXT/PLAIN preferred to TEXT/HTML in a
  MULTIPART/ALTERNATIVE, HTML without its markup), transfer encoding and
  charset undone, white space collapsed; ``""`` when there is no text.
* The parser (:func:`txmail.imap.parser.fetch_att`) reads the item, the
  FETCH renderer (:mod:`txmail.imap.fetch`) writes ``PREVIEW string``, a
  literal when the text is not ASCII.  PREVIEW does not set ``\\Seen``.
* ``LAZY`` (RFC 8970 section 3.2) is accepted and changes nothing: the
  preview is computed from the message at each FETCH (no cache), so it is
  never ``NIL``.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from txmail.imap.commands.registry import extension

__all__: list[str] = []

# RFC 8970 section 2: the capability.
extension("PREVIEW")
