-- txmail schema 8: the MTA-STS policy cache shared by every node
-- (txmail.pg.mtasts, RFC 8461 section 5.1: policies are cached
-- persistently).
--
-- One row per recipient domain: the TXT record's policy id, when the
-- policy was fetched (seconds since the epoch, the fetching node's clock)
-- and the policy text as served (parsed again when read).

CREATE TABLE mta_sts_policies (
    domain text PRIMARY KEY,
    policy_id text NOT NULL,
    fetched_at double precision NOT NULL,
    policy text NOT NULL
);
