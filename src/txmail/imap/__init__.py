"""
IMAP4rev1 (RFC 3501) support.

The sans-IO grammar: :mod:`txmail.imap.fragment` frames client input into
commands, :mod:`txmail.imap.parser` parses them into the dataclasses of
:mod:`txmail.imap.types`, and :mod:`txmail.imap.serialize` writes responses.
"""

__all__: list[str] = []
