-- What an agent's node attestation said about it: its node selectors (k8s_psat: cluster,
-- namespace, service account, pod, node, allowed labels), stored as a sorted JSON array like an
-- entry's selectors, and whether its attestor lets it attest again (SPIRE's node selectors and
-- CanReattest). Node-alias entries (parented to the server) apply to the agents whose
-- selectors include all of theirs.
ALTER TABLE agents ADD COLUMN selectors TEXT NOT NULL DEFAULT '[]';
ALTER TABLE agents ADD COLUMN can_reattest BIGINT NOT NULL DEFAULT 0;
