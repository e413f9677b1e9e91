-- SPIRE's store_svid flag of an entry, and who created the entry: sigil-controller records its
-- own entries (managed_by) so it only ever updates or deletes those, never an operator's.
ALTER TABLE entries ADD COLUMN store_svid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE entries ADD COLUMN managed_by TEXT NOT NULL DEFAULT '';
