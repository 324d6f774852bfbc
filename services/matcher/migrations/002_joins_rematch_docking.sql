-- Streaming joins both ways, re-matching, docking modes and institutions' responsiveness.

-- Columns ListProducts filters on (kept in step with `product` by the catalog's write path).
ALTER TABLE products ADD COLUMN loan_category text NOT NULL DEFAULT '';
ALTER TABLE products ADD COLUMN programme_tags text[] NOT NULL DEFAULT '{}';
ALTER TABLE products ADD COLUMN industries text[] NOT NULL DEFAULT '{}'; -- empty = every industry
CREATE INDEX products_filter ON products (loan_category, status, product_id);

-- Leads: where they came from and whether they still count against the demand's cap.
ALTER TABLE leads ADD COLUMN origin text NOT NULL DEFAULT 'INTELLIGENT_MATCH';
ALTER TABLE leads ADD COLUMN active boolean NOT NULL DEFAULT true;
ALTER TABLE leads ADD COLUMN status text NOT NULL DEFAULT 'CREATED';

-- The demands the matcher keeps open: the other side of the reverse join, re-matching and the
-- institutions' pool. `part` is the demand's partition of the demand topic: a worker holds in
-- memory the open demands of the partitions it is assigned. `tried` lists every institution the
-- demand was ever handed to; `active_leads` those still working it (at most 3).
CREATE TABLE open_demands (
    demand_id     text        PRIMARY KEY,
    part          int         NOT NULL,
    demand        bytea       NOT NULL, -- finmesh.demand.v1.Demand as accepted (with the enterprise)
    docking_mode  text        NOT NULL,
    consent       boolean     NOT NULL,
    open          boolean     NOT NULL DEFAULT true,
    active_leads  int         NOT NULL DEFAULT 0 CHECK (active_leads >= 0),
    tried         text[]      NOT NULL DEFAULT '{}',
    valid_until   timestamptz,
    matched_at    timestamptz NOT NULL DEFAULT now(),
    closed_reason text        NOT NULL DEFAULT ''
);
CREATE INDEX open_demands_part ON open_demands (part) WHERE open;

-- Standing subscriptions of institutions (institution-active docking).
CREATE TABLE subscriptions (
    subscription_id text        PRIMARY KEY,
    institution_id  text        NOT NULL,
    subscription    bytea       NOT NULL, -- finmesh.matching.v1.Subscription
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_institution ON subscriptions (institution_id);

-- Each institution's measured responsiveness, from the leads' status changes.
CREATE TABLE institution_stats (
    institution_id   text   PRIMARY KEY,
    leads            int    NOT NULL DEFAULT 0,
    contacted        int    NOT NULL DEFAULT 0,
    decided          int    NOT NULL DEFAULT 0,
    approved         int    NOT NULL DEFAULT 0,
    contact_seconds  int[]  NOT NULL DEFAULT '{}' -- the latest 200 lead-to-contact times
);
