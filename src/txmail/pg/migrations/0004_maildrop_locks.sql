-- txmail schema 4: the POP3 maildrop lock shared by every node
-- (txmail.pg.maildrop, RFC 1939 section 8).
--
-- One row per maildrop a POP3 session holds: the session's random token,
-- the node (txmail.pg.store.PostgresProvider.node) and when the lease ends,
-- on the database's clock.  The holder renews it every third of the lease
-- and deletes its own row (by token) when the session ends; a row whose
-- lease has ended (its node died) is taken over by the next session:
-- INSERT ... ON CONFLICT (address) DO UPDATE ... WHERE expires < now().

CREATE TABLE maildrop_locks (
    address text PRIMARY KEY,
    token text NOT NULL,
    node text NOT NULL,
    acquired timestamptz NOT NULL DEFAULT now(),
    expires timestamptz NOT NULL
);
