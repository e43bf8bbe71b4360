"""
SMTP receiving (RFC 5321): a sans-IO part and a thin Twisted adapter.

* :mod:`txmail.smtp.codes` -- every reply, named once.
* :mod:`txmail.smtp.grammar` -- ABNF-named parse functions (paths, domains,
  ESMTP parameters).
* :mod:`txmail.smtp.dotstuff` -- DATA framing (only ``<CRLF>.<CRLF>`` ends data).
* :mod:`txmail.smtp.events` -- the events the session hands to its application.
* :mod:`txmail.smtp.session` -- the server state machine
  (``receive_data`` / ``next_event`` / ``data_to_send``).
* :mod:`txmail.smtp.server` -- ``SMTPFactory`` and ``SMTPServerProtocol``,
  the only module here that imports Twisted.

This package module imports nothing, so importing the sans-IO modules never
pulls in Twisted.
"""

from __future__ import annotations

__all__: list[str] = []
