-- Contact policies are announced on notifier.contact-policy-changed.v1 (for the matcher and the demand
-- service, which date their leads by them) in the transaction that sets them. Those set before that
-- release are not yet: the notifier announces them once at start (Notifier.announce_policies).
ALTER TABLE contact_policies ADD COLUMN announced boolean NOT NULL DEFAULT false;
