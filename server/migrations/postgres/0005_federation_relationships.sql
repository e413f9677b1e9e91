-- Federation relationships made through the admin API (`federation create`) or by
-- sigil-controller (ClusterFederatedTrustDomain); the server's `federates_with` config is not
-- stored and wins over a stored relationship for the same trust domain.
CREATE TABLE federation_relationships (
    trust_domain        TEXT PRIMARY KEY NOT NULL,
    bundle_endpoint_url TEXT NOT NULL,
    -- "https_spiffe" or "https_web".
    profile             TEXT NOT NULL,
    endpoint_spiffe_id  TEXT NOT NULL DEFAULT '',
    managed_by          TEXT NOT NULL DEFAULT '',
    created_at          BIGINT NOT NULL
);
