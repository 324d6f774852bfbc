-- Institutions as the notifier knows them (from demand.institution-changed.v1): their own contact
-- SLA, and the SHA-256 of their current API key, which authenticates their DeliveryService calls
-- (empty until an InstitutionChanged carrying it arrives: for an institution registered before
-- this release, its next change or API key rotation).
ALTER TABLE institution_slas RENAME TO institutions;
ALTER TABLE institutions ADD COLUMN api_key_sha256 text NOT NULL DEFAULT '';
