-- The demand service: the system of record for enterprises, institutions and demands.
-- Enumerations are stored as the contracts' numbers; money is bigint fen.

CREATE TABLE enterprises (
    uscc                text PRIMARY KEY CHECK (length(uscc) = 18),
    name                text        NOT NULL,
    region_code         text        NOT NULL,
    city                text        NOT NULL DEFAULT '',
    industry_code       text        NOT NULL DEFAULT '',
    key_industry        int         NOT NULL,
    size                int         NOT NULL,
    srdi_tier           int         NOT NULL,
    high_tech           boolean     NOT NULL DEFAULT false,
    founded_year        int         NOT NULL,
    annual_revenue_fen  bigint      NOT NULL DEFAULT 0,
    employees           int         NOT NULL DEFAULT 0,
    tax_credit_grade    text        NOT NULL DEFAULT '',
    has_borrowed        boolean     NOT NULL DEFAULT false,
    special_zones       text[]      NOT NULL DEFAULT '{}',
    registered_at       timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX enterprises_region ON enterprises (region_code);

CREATE TABLE institutions (
    institution_id      text PRIMARY KEY,
    name                text        NOT NULL,
    type                int         NOT NULL,
    regions_served      text[]      NOT NULL DEFAULT '{}',
    contact_sla_hours   int         NOT NULL CHECK (contact_sla_hours BETWEEN 1 AND 720),
    lead_topic          text        NOT NULL,
    registered_at       timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE demands (
    demand_id                   text PRIMARY KEY,
    channel                     int         NOT NULL,
    idempotency_key             text        NOT NULL,
    content_hash                text        NOT NULL,
    enterprise_uscc             text        NOT NULL REFERENCES enterprises (uscc),
    amount_fen                  bigint      NOT NULL CHECK (amount_fen > 0),
    least_acceptable_amount_fen bigint      NOT NULL DEFAULT 0,
    term_months                 int         NOT NULL,
    max_rate_bps                int         NOT NULL,
    loan_category               int         NOT NULL,
    purpose                     int         NOT NULL,
    collateral_offered          int[]       NOT NULL DEFAULT '{}',
    first_loan                  boolean     NOT NULL DEFAULT false,
    preferred_institution_ids   text[]      NOT NULL DEFAULT '{}',
    excluded_institution_ids    text[]      NOT NULL DEFAULT '{}',
    consent_to_share            boolean     NOT NULL DEFAULT false,
    valid_until                 timestamptz NOT NULL,
    docking_mode                int         NOT NULL,
    product_id                  text        NOT NULL DEFAULT '',
    status                      int         NOT NULL,
    submitted_at                timestamptz NOT NULL,
    updated_at                  timestamptz NOT NULL,
    no_match_explanation        text        NOT NULL DEFAULT '',
    enterprise                  jsonb       NOT NULL, -- the enterprise as it was when the demand was accepted
    UNIQUE (channel, idempotency_key)
);
CREATE INDEX demands_enterprise ON demands (enterprise_uscc);
CREATE INDEX demands_status ON demands (status, valid_until);

CREATE TABLE demand_history (
    demand_id   text        NOT NULL REFERENCES demands (demand_id),
    seq         int         NOT NULL,
    status      int         NOT NULL,
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,
    reason      text        NOT NULL,
    PRIMARY KEY (demand_id, seq)
);

CREATE TABLE leads (
    lead_id         text PRIMARY KEY,
    demand_id       text        NOT NULL REFERENCES demands (demand_id),
    institution_id  text        NOT NULL,
    product_id      text        NOT NULL,
    product_version bigint      NOT NULL,
    origin          int         NOT NULL,
    score           int         NOT NULL,
    rank            int         NOT NULL,
    explanation     jsonb       NOT NULL,
    rules_version   text        NOT NULL,
    status          int         NOT NULL,
    created_at      timestamptz,
    contact_due_at  timestamptz,
    stored_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX leads_demand ON leads (demand_id, rank);
CREATE INDEX leads_institution ON leads (institution_id, status);
