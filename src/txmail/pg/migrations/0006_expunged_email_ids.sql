-- txmail schema 6: the EMAILID (RFC 8474) of each message expunged, kept
-- with its UID in the expunge history (txmail.interfaces.IExpungedEmailIds),
-- so that JMAP's Email/changes names the Emails destroyed since a state
-- after a restart or on another node.  NULL for rows written before.

ALTER TABLE expunged ADD COLUMN email_id text;
