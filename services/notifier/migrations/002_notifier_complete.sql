-- Issue 5: inbox filters and streaming, webhook deliveries, contact clocks.

-- The transaction that recorded each notification: Subscribe streams in (tx, seq) order and only
-- up to the oldest transaction still running, so a notification committed late is never skipped.
ALTER TABLE notifications ADD COLUMN tx bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX notifications_stream ON notifications (recipient_kind, recipient_id, tx, seq);
CREATE INDEX notifications_unread ON notifications (recipient_kind, recipient_id) WHERE NOT read;

-- Institutions' signing secrets (generated on the first webhook, returned once).
CREATE TABLE institution_secrets (
    institution_id text        PRIMARY KEY,
    secret         text        NOT NULL,
    created_at     timestamptz NOT NULL
);

CREATE TABLE webhooks (
    webhook_id     uuid        PRIMARY KEY,  -- derived from institution and URL
    institution_id text        NOT NULL,
    url            text        NOT NULL,
    created_at     timestamptz NOT NULL,
    active         boolean     NOT NULL DEFAULT true
);
CREATE INDEX webhooks_institution ON webhooks (institution_id) WHERE active;

-- One row per (notification, webhook): the id is derived from both, so a replay adds nothing.
CREATE TABLE deliveries (
    delivery_id     uuid        PRIMARY KEY,
    webhook_id      uuid        NOT NULL REFERENCES webhooks,
    institution_id  text        NOT NULL,
    notification_id uuid        NOT NULL,
    kind            text        NOT NULL,
    body            bytea       NOT NULL,  -- the JSON posted, the same on every attempt
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        int         NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    leased_until    timestamptz,           -- a worker is sending it (crash: another takes over after this)
    delivered_at    timestamptz,
    dead_reason     text        NOT NULL DEFAULT ''
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_institution ON deliveries (institution_id, created_at DESC);

CREATE TABLE delivery_attempts (
    delivery_id uuid        NOT NULL REFERENCES deliveries,
    attempt     int         NOT NULL,
    at          timestamptz NOT NULL,
    ok          boolean     NOT NULL,
    http_status int         NOT NULL DEFAULT 0,
    error       text        NOT NULL DEFAULT '',
    duration_ms int         NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, attempt)
);

-- Contact SLAs: the institution's own (from demand.institution-changed.v1) and policies set here.
CREATE TABLE institution_slas (
    institution_id text   PRIMARY KEY,
    sla_hours      int    NOT NULL,
    version        bigint NOT NULL
);
CREATE TABLE contact_policies (
    institution_id     text        NOT NULL,
    product_id         text        NOT NULL DEFAULT '',  -- '' = the institution's default
    sla_hours          int         NOT NULL DEFAULT 0,   -- 0 = not set here
    escalation_contact text        NOT NULL DEFAULT '',
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (institution_id, product_id)
);

-- One contact clock per lead, started when the lead is DELIVERED.
CREATE TABLE lead_clocks (
    lead_id            text        PRIMARY KEY,
    demand_id          text        NOT NULL,
    institution_id     text        NOT NULL,
    product_id         text        NOT NULL,
    enterprise_uscc    text        NOT NULL DEFAULT '',
    sla_hours          int         NOT NULL,
    sla_source         text        NOT NULL,
    escalation_contact text        NOT NULL DEFAULT '',
    delivered_at       timestamptz NOT NULL,
    remind_at          timestamptz NOT NULL,
    due_at             timestamptz NOT NULL,
    state              text        NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'stopped', 'breached')),
    next_fire_at       timestamptz,            -- the next reminder or deadline while running
    reminded_at        timestamptz,
    breached_at        timestamptz,
    stopped_at         timestamptz,
    stopped_by         text        NOT NULL DEFAULT '',
    contacted_at       timestamptz
);
CREATE INDEX lead_clocks_due ON lead_clocks (next_fire_at) WHERE state = 'running';

-- Which enterprise each demand belongs to (from the demand's and the matcher's events), so that
-- lead outcomes, which name only the demand, reach the enterprise.
CREATE TABLE demand_enterprises (
    demand_id       text PRIMARY KEY,
    enterprise_uscc text NOT NULL
);
