-- Interest subsidy funds and their grants (services/demand/subsidies). A fund's terms are kept as
-- its protobuf (finmesh.subsidy.v1.Fund, ledger fields unset); its ledger in columns, which never
-- overdraw its quota.
CREATE TABLE subsidy_funds (
    fund_id      text        PRIMARY KEY,
    terms        bytea       NOT NULL,
    quota_fen    bigint      NOT NULL,
    reserved_fen bigint      NOT NULL DEFAULT 0,
    utilised_fen bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL,
    CHECK (reserved_fen >= 0 AND utilised_fen >= 0 AND reserved_fen + utilised_fen <= quota_fen)
);
-- At most one grant per lead (its id derives from the lead).
CREATE TABLE subsidy_grants (
    grant_id        text        PRIMARY KEY,
    lead_id         text        NOT NULL UNIQUE,
    fund_id         text        NOT NULL REFERENCES subsidy_funds,
    enterprise_uscc text        NOT NULL,
    institution_id  text        NOT NULL,
    status          smallint    NOT NULL,
    body            bytea       NOT NULL,  -- finmesh.subsidy.v1.Grant
    updated_at      timestamptz NOT NULL
);
CREATE INDEX subsidy_grants_enterprise ON subsidy_grants (enterprise_uscc, grant_id);
CREATE INDEX subsidy_grants_fund ON subsidy_grants (fund_id, grant_id);
