"""
A Sendmail milter client (protocol version 6, as Postfix speaks it): the
content filters people already run behind Postfix or Sendmail (OpenDKIM,
rspamd's proxy worker, ClamAV's milter) asked at every SMTP stage as a
txmail policy hook.

* :mod:`txmail.milter.protocol`: the sans-IO codec and client state
  machine (no Twisted).
* :mod:`txmail.milter.edits`: the header edits a milter asks for, applied
  to a header section (no Twisted).
* :mod:`txmail.milter.client`: :class:`~txmail.milter.client.MilterPolicy`,
  the Twisted side, and the ``[[milter]]`` configuration entries.
"""

__all__: list[str] = []
