-- txmail schema 7: Sieve scripts (RFC 5228), edited over ManageSieve (RFC 5804)
-- and run at delivery (txmail.interfaces.ISieveScripts).
--
-- One row per script of a user: its name (RFC 5804 section 1.6, in Unicode
-- NFC, checked by txmail.sieve.storage.check_script_name), its octets as
-- uploaded, and whether it is the user's active script; at most one is
-- (the partial unique index).  Changes of one user's scripts take turns
-- under a transaction-scoped advisory lock (txmail.pg.store.SIEVE_LOCK).

CREATE TABLE sieve_scripts (
    owner text NOT NULL,
    name text NOT NULL,
    content bytea NOT NULL,
    active boolean NOT NULL DEFAULT false,
    updated timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);
CREATE UNIQUE INDEX sieve_scripts_active ON sieve_scripts (owner) WHERE active;
