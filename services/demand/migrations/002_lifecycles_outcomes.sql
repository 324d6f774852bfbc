-- Enterprise and institution versions, institution API keys (hash only), window filings and
-- duplicates on demands, lead outcomes and lead history.

ALTER TABLE enterprises ADD COLUMN version bigint NOT NULL DEFAULT 1;
CREATE INDEX enterprises_segments ON enterprises (key_industry, srdi_tier, size);

ALTER TABLE institutions
    ADD COLUMN version      bigint NOT NULL DEFAULT 1,
    ADD COLUMN api_key_hash text; -- sha256 of the key issued at registration; the key itself is never stored
CREATE UNIQUE INDEX institutions_api_key ON institutions (api_key_hash);

ALTER TABLE demands
    ADD COLUMN duplicate_of text NOT NULL DEFAULT '',
    ADD COLUMN operator_id  text NOT NULL DEFAULT '';
CREATE INDEX demands_enterprise_recent ON demands (enterprise_uscc, submitted_at);
CREATE INDEX demands_submitted ON demands (submitted_at);

ALTER TABLE leads
    ADD COLUMN contact_method       int         NOT NULL DEFAULT 0,
    ADD COLUMN contacted_at         timestamptz,
    ADD COLUMN offer_amount_fen     bigint      NOT NULL DEFAULT 0,
    ADD COLUMN offer_rate_bps       int         NOT NULL DEFAULT 0,
    ADD COLUMN offer_term_months    int         NOT NULL DEFAULT 0,
    ADD COLUMN disbursed_amount_fen bigint      NOT NULL DEFAULT 0,
    ADD COLUMN disbursed_at         timestamptz,
    ADD COLUMN decline_reason       int         NOT NULL DEFAULT 0,
    ADD COLUMN decline_text         text        NOT NULL DEFAULT '',
    ADD COLUMN updated_at           timestamptz;
CREATE INDEX leads_institution_recent ON leads (institution_id, stored_at DESC, lead_id);

CREATE TABLE lead_history (
    lead_id     text        NOT NULL REFERENCES leads (lead_id),
    seq         int         NOT NULL,
    status      int         NOT NULL,
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,
    reason      text        NOT NULL,
    PRIMARY KEY (lead_id, seq)
);
