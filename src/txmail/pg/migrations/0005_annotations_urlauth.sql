-- txmail schema 5: IMAP METADATA entries (RFC 5464, txmail.interfaces.IMetadataStore)
-- and URLAUTH access keys (RFC 4467, txmail.interfaces.IURLAuthKeys).
--
-- An annotation belongs to a mailbox (it follows a RENAME, which keeps the
-- row's id, and goes with a DELETE) or, with mailbox NULL, to the user's
-- server entries.  An access key belongs to a mailbox and to the
-- UIDVALIDITY it was made for.

CREATE TABLE annotations (
    owner text NOT NULL,
    mailbox bigint REFERENCES mailboxes (id) ON DELETE CASCADE,
    name text NOT NULL,
    value bytea NOT NULL
);
CREATE UNIQUE INDEX annotations_entry ON annotations (owner, coalesce(mailbox, 0), name);
CREATE INDEX annotations_mailbox ON annotations (mailbox);

CREATE TABLE urlauth_keys (
    mailbox bigint PRIMARY KEY REFERENCES mailboxes (id) ON DELETE CASCADE,
    uidvalidity bigint NOT NULL,
    key bytea NOT NULL
);
