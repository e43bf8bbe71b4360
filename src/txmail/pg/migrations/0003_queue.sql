-- txmail schema 3: the outbound queue (txmail.pg.queue).
--
-- The same data as the file queue's <id>.json and <id>.msg
-- (txmail.delivery.queue.SpoolQueue), shared by the queue runners of every
-- node: an entry with its envelope, its recipients with their states, and
-- its message in pieces.

CREATE TABLE queue_entries (
    queue_id text PRIMARY KEY,
    -- Insertion order: entries are listed and claimed oldest first.
    seq bigserial NOT NULL UNIQUE,
    -- txmail.model.Envelope as JSON (the file queue's "envelope").
    envelope jsonb NOT NULL,
    size bigint NOT NULL CHECK (size >= 0),
    -- Seconds since the epoch (the runner's retry schedule counts from it).
    created double precision NOT NULL,
    -- A queue runner's claim: the node that took the entry, and when its
    -- lease ends (seconds since the epoch, the database's clock).  Claims
    -- are taken with SELECT ... FOR UPDATE SKIP LOCKED.
    claimed_by text,
    lease_until double precision
);
CREATE INDEX queue_entries_lease ON queue_entries (lease_until);

-- Per recipient its state fields, as the runner keeps them (state,
-- attempts, next_attempt, last_error, host, reply, status, dsn_sent...).
CREATE TABLE queue_recipients (
    queue_id text NOT NULL REFERENCES queue_entries (queue_id) ON DELETE CASCADE,
    position integer NOT NULL,
    address text NOT NULL,
    fields jsonb NOT NULL,
    PRIMARY KEY (queue_id, position),
    UNIQUE (queue_id, address)
);

-- The message, in pieces of at most 256 KiB (txmail.pg.queue.CHUNK_SIZE),
-- numbered from 0.
CREATE TABLE queue_chunks (
    queue_id text NOT NULL REFERENCES queue_entries (queue_id) ON DELETE CASCADE,
    position integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (queue_id, position)
);
