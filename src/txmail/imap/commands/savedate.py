"""
SAVEDATE (RFC 8514): when each message was saved into its mailbox.

The save date is the stores' (:attr:`txmail.model.MessageInfo.save_date`,
set when a message is delivered, appended, copied or moved into a mailbox
and never changed while it stays; the Maildir store keeps it in its index,
:class:`txmail.interfaces.ISaveDates`).  The parser reads the FETCH item
and the search keys; :mod:`txmail.imap.fetch` and :mod:`txmail.imap.search`
answer them:

* ``FETCH SAVEDATE`` (section 4.2): the save date as a ``date-time`` in
  UTC, or ``NIL`` for a message whose store keeps none.
* ``SEARCH SAVEDBEFORE``/``SAVEDON``/``SAVEDSINCE date`` (section 4.3):
  the date of the save date in UTC, compared as ``BEFORE``/``ON``/``SINCE``
  compare the internal date; the internal date when the store keeps no
  save date.  ``SAVEDATESUPPORTED`` matches every message of a mailbox
  whose store keeps save dates, none otherwise.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from txmail.imap.commands.registry import extension

__all__: list[str] = []

# RFC 8514 section 4.1: the capability.
extension("SAVEDATE")
