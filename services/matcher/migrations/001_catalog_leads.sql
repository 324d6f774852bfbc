-- The product catalog, the leads issued and the outcome of matching each demand.

-- One row per product: the latest version as stored. `product` is the finmesh.catalog.v1.Product
-- (with version and updated_at set); `content_hash` covers everything else, so an upsert of the
-- same content keeps the version.
CREATE TABLE products (
    product_id      text        PRIMARY KEY,
    institution_id  text        NOT NULL,
    version         bigint      NOT NULL CHECK (version > 0),
    status          text        NOT NULL,
    content_hash    text        NOT NULL,
    product         bytea       NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_institution ON products (institution_id, product_id);

-- One row per demand matched: its outcome (the demand is matched once; replays are skipped).
CREATE TABLE matches (
    demand_id               text        PRIMARY KEY,
    enterprise_uscc         text        NOT NULL,
    leads                   int         NOT NULL,
    candidates_considered   int         NOT NULL,
    no_match_explanation    text        NOT NULL DEFAULT '',
    rules_version           text        NOT NULL,
    matched_at              timestamptz NOT NULL DEFAULT now()
);

-- One row per lead: a demand handed to one institution for one of its products.
CREATE TABLE leads (
    lead_id         text        PRIMARY KEY,
    demand_id       text        NOT NULL,
    institution_id  text        NOT NULL,
    product_id      text        NOT NULL,
    product_version bigint      NOT NULL,
    score           int         NOT NULL CHECK (score BETWEEN 0 AND 100),
    rank            int         NOT NULL,
    rules_version   text        NOT NULL,
    lead            bytea       NOT NULL,
    created_at      timestamptz NOT NULL,
    contact_due_at  timestamptz NOT NULL,
    UNIQUE (demand_id, institution_id)
);
CREATE INDEX leads_institution ON leads (institution_id, created_at);
