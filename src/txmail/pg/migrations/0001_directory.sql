-- txmail schema 1: the user directory (txmail.pg.directory).
--
-- The same data as users.json (txmail.directory.FileDirectory): users with
-- their SCRAM-SHA-256 verifiers, aliases (an address, or "@domain" for a
-- catch-all) with their ordered targets.  Addresses are stored canonical
-- (txmail.directory.normalize_address: local part and domain lower-case,
-- by the code: lower() of the database's collation may differ from Python's).

-- The domains of the users and aliases: each is local (besides the
-- configured [server] domains).  A row lives while a user or alias of the
-- domain does.
CREATE TABLE domains (
    name text PRIMARY KEY CHECK (name <> ''),
    created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    address text PRIMARY KEY CHECK (position('@' IN address) > 1),
    domain text NOT NULL REFERENCES domains (name),
    -- {"salt", "iterations", "stored_key", "server_key"}, as users.json's
    -- "scram" (txmail.auth.passwords.ScramCredentials.to_dict); NULL: the
    -- user gets mail but cannot log in.
    scram jsonb,
    created timestamptz NOT NULL DEFAULT now(),
    CHECK (right(address, length(domain) + 1) = '@' || domain)
);
CREATE INDEX users_domain ON users (domain);

CREATE TABLE aliases (
    -- "local@domain", or "@domain": the domain's catch-all.
    alias text PRIMARY KEY CHECK (position('@' IN alias) > 0),
    domain text NOT NULL REFERENCES domains (name),
    created timestamptz NOT NULL DEFAULT now(),
    CHECK (right(alias, length(domain) + 1) = '@' || domain)
);
CREATE INDEX aliases_domain ON aliases (domain);

-- An alias's targets in order: local users, other aliases, remote addresses.
CREATE TABLE alias_targets (
    alias text NOT NULL REFERENCES aliases (alias) ON DELETE CASCADE,
    position integer NOT NULL,
    target text NOT NULL,
    PRIMARY KEY (alias, position),
    UNIQUE (alias, target)
);
