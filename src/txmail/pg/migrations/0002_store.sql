-- txmail schema 2: the mail store (txmail.pg.store).
--
-- The same data as a Maildir tree (txmail.store.maildir): each user's
-- mailboxes with their IMAP counters, the messages with their flags, dates,
-- modification sequences and object ids, the parsed metadata, the expunge
-- history (QRESYNC) and the subscriptions.  Message octets live in bodies
-- and body_chunks (txmail.pg.bodies.BodyStore), shared by copies.
--
-- UIDs and modseqs are allocated by UPDATE mailboxes ... RETURNING in the
-- writing transaction: the row lock makes two nodes appending to one
-- mailbox take turns, never give a UID twice.

-- One row per user with a store: the last UIDVALIDITY given (RFC 3501
-- section 2.3.1.1: a re-created name never gets an old value back).
CREATE TABLE mail_users (
    address text PRIMARY KEY,
    last_uidvalidity bigint NOT NULL DEFAULT 0,
    created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mailboxes (
    id bigserial PRIMARY KEY,
    owner text NOT NULL REFERENCES mail_users (address) ON DELETE CASCADE,
    -- Canonical name (txmail.model.normalize_mailbox_name), "/" between levels.
    name text NOT NULL,
    -- RFC 8474 MAILBOXID: kept by a rename, never reused.
    mailbox_id text NOT NULL UNIQUE,
    uidvalidity bigint NOT NULL CHECK (uidvalidity > 0 AND uidvalidity < 4294967296),
    uidnext bigint NOT NULL DEFAULT 1,
    highest_modseq bigint NOT NULL DEFAULT 1,
    -- The highest UID claimed as \Recent (IMailbox.claim_recent).
    recent_uid bigint NOT NULL DEFAULT 0,
    -- RFC 6154 role ("\Sent", ...), at most one mailbox per role and user
    -- (the code moves a role it gives again).
    special_use text,
    UNIQUE (owner, name)
);

CREATE TABLE subscriptions (
    owner text NOT NULL REFERENCES mail_users (address) ON DELETE CASCADE,
    name text NOT NULL,
    PRIMARY KEY (owner, name)
);

-- A message's octets (CRLF line ends), in chunks of at most 256 KiB in
-- order of seq; one body is shared by every copy of the message.
CREATE TABLE bodies (
    id bigserial PRIMARY KEY,
    size bigint NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE body_chunks (
    body_id bigint NOT NULL REFERENCES bodies (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (body_id, seq)
);

CREATE TABLE messages (
    mailbox bigint NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid bigint NOT NULL,
    modseq bigint NOT NULL,
    -- System flags and keywords, as txmail.model.normalize_flags gives them.
    flags text[] NOT NULL DEFAULT '{}',
    -- Seconds since the epoch (IMAP INTERNALDATE; RFC 8514 SAVEDATE).
    internal_date double precision NOT NULL,
    save_date double precision NOT NULL,
    size bigint NOT NULL,
    -- RFC 8474 EMAILID: a copy keeps its source's.
    email_id text NOT NULL,
    body_id bigint NOT NULL REFERENCES bodies (id),
    -- txmail.mime.encode_metadata of the parsed message.
    metadata bytea NOT NULL,
    PRIMARY KEY (mailbox, uid)
);
CREATE INDEX messages_modseq ON messages (mailbox, modseq);
CREATE INDEX messages_body ON messages (body_id);

-- The expunge history (RFC 7162 section 3.2, IExpungeHistory).
CREATE TABLE expunged (
    mailbox bigint NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid bigint NOT NULL,
    modseq bigint NOT NULL,
    PRIMARY KEY (mailbox, uid)
);
CREATE INDEX expunged_modseq ON expunged (mailbox, modseq);
