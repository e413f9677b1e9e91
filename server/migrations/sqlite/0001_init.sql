-- Registration entries. Selectors, DNS names and federated trust domains are stored as sorted
-- JSON arrays: entries are always read whole, and the in-memory index answers every lookup.
CREATE TABLE entries (
    id              TEXT PRIMARY KEY NOT NULL,
    spiffe_id       TEXT NOT NULL,
    parent_id       TEXT NOT NULL,
    selectors       TEXT NOT NULL,
    x509_svid_ttl   INTEGER NOT NULL DEFAULT 0,
    jwt_svid_ttl    INTEGER NOT NULL DEFAULT 0,
    dns_names       TEXT NOT NULL DEFAULT '[]',
    federates_with  TEXT NOT NULL DEFAULT '[]',
    admin           INTEGER NOT NULL DEFAULT 0,
    downstream      INTEGER NOT NULL DEFAULT 0,
    hint            TEXT NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    revision        INTEGER NOT NULL DEFAULT 0
);
-- SPIRE refuses two entries with the same SPIFFE ID, parent and selectors.
CREATE UNIQUE INDEX entries_similar ON entries (spiffe_id, parent_id, selectors);
CREATE INDEX entries_parent ON entries (parent_id);

CREATE TABLE join_tokens (
    token       TEXT PRIMARY KEY NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE agents (
    spiffe_id         TEXT PRIMARY KEY NOT NULL,
    attestation_type  TEXT NOT NULL,
    serial            TEXT NOT NULL,
    expires_at        INTEGER NOT NULL,
    banned            INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    last_seen         INTEGER NOT NULL
);

CREATE TABLE federated_bundles (
    trust_domain  TEXT PRIMARY KEY NOT NULL,
    bundle        TEXT NOT NULL,
    updated_at    INTEGER NOT NULL
);
