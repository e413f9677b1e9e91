-- The serial of an agent SVID issued by RenewAgent but not yet presented by the agent. Until
-- the agent uses it, the previous SVID (`serial`) keeps working, so a renewal whose answer was
-- lost does not lock the agent out; once it is used, it replaces `serial` and the old SVID is
-- refused (SPIRE's CertSerialNumber / NewCertSerialNumber).
ALTER TABLE agents ADD COLUMN new_serial TEXT NOT NULL DEFAULT '';
