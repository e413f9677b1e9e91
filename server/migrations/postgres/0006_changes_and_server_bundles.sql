-- Several servers on one database. Every write appends a row here in its own transaction (under
-- one advisory lock, so ids commit in order) and NOTIFYs sigil_changes; each server follows the
-- rows the others wrote and applies them to its in-memory index. Rows older than an hour are
-- pruned; `changes_pruned_through` tells a follower that fell further behind to reload
-- everything.
CREATE TABLE changes (
    id      BIGSERIAL PRIMARY KEY,
    -- entry | agent | server_bundle | federated_bundle | relationship
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    -- the process that wrote it (it has applied it already)
    origin  TEXT NOT NULL,
    at      BIGINT NOT NULL
);

-- Each server's own authorities (roots, JWT keys, tainted ones), published for the others:
-- every server's bundle is the union, so an authority is trusted everywhere before its server
-- signs with it (SPIRE's model of one shared bundle with every server's CA).
CREATE TABLE server_bundles (
    server_id   TEXT PRIMARY KEY NOT NULL,
    bundle      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE datastore_meta (
    name   TEXT PRIMARY KEY NOT NULL,
    value  BIGINT NOT NULL
);
-- The trust domain's bundle sequence shared by all servers.
INSERT INTO datastore_meta (name, value) VALUES ('bundle_sequence', 0);
INSERT INTO datastore_meta (name, value) VALUES ('changes_pruned_through', 0);
