-- The contact policies the notifier announces (notifier.contact-policy-changed.v1), as the matcher
-- keeps them (meshkit/institutions.py): a roadshow intent's lead, made here, is dated by its
-- institution's policy, as the notifier's contact clock will count it.
CREATE TABLE contact_policies (
    institution_id text        NOT NULL,
    product_id     text        NOT NULL,  -- '' = the institution's default
    sla_hours      int         NOT NULL,  -- 0 = not set by this policy
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (institution_id, product_id)
);
