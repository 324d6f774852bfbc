-- The complete roadshow: schedule and windows, applications with the ranking's reasons,
-- invitations, investors, intents with what their leads became, and the read models the
-- roadshow keeps of the demand service's enterprises, institutions and demands.

ALTER TABLE roadshows
    ADD COLUMN theme_kind            int         NOT NULL DEFAULT 1,
    ADD COLUMN applications_open_at  timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN applications_close_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN automatic             boolean     NOT NULL DEFAULT false,
    ADD COLUMN request_id            text,
    ADD COLUMN version               bigint      NOT NULL DEFAULT 1,
    ADD COLUMN updated_at            timestamptz NOT NULL DEFAULT now();
-- One automatic roadshow per month, however many replicas try to create it.
CREATE UNIQUE INDEX roadshows_automatic_month ON roadshows (month) WHERE automatic;
CREATE UNIQUE INDEX roadshows_request ON roadshows (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX roadshows_due ON roadshows (status, applications_close_at);
CREATE INDEX roadshows_held ON roadshows (held_at);

CREATE TABLE applications (
    roadshow_id       text        NOT NULL REFERENCES roadshows (roadshow_id),
    uscc              text        NOT NULL,
    status            int         NOT NULL,
    amount_sought_fen bigint      NOT NULL CHECK (amount_sought_fen > 0),
    purpose           int         NOT NULL,
    pitch             text        NOT NULL DEFAULT '',
    refusal_reasons   text[]      NOT NULL DEFAULT '{}',
    score             int         NOT NULL DEFAULT 0,
    rank              int         NOT NULL DEFAULT 0,
    ranking           jsonb       NOT NULL DEFAULT '[]',
    selection_reason  text        NOT NULL DEFAULT '',
    override_by       text        NOT NULL DEFAULT '',
    overrides         int         NOT NULL DEFAULT 0,
    attempts          int         NOT NULL DEFAULT 1,
    applied_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (roadshow_id, uscc)
);

CREATE TABLE invitations (
    roadshow_id text        NOT NULL REFERENCES roadshows (roadshow_id),
    uscc        text        NOT NULL,
    invited_at  timestamptz NOT NULL,
    PRIMARY KEY (roadshow_id, uscc)
);

CREATE TABLE investors (
    roadshow_id      text        NOT NULL REFERENCES roadshows (roadshow_id),
    institution_id   text        NOT NULL,
    name             text        NOT NULL,
    institution_type int         NOT NULL,
    registered_at    timestamptz NOT NULL,
    PRIMARY KEY (roadshow_id, institution_id)
);

CREATE TABLE intents (
    intent_id           text PRIMARY KEY,
    roadshow_id         text        NOT NULL REFERENCES roadshows (roadshow_id),
    institution_id      text        NOT NULL,
    uscc                text        NOT NULL,
    intended_amount_fen bigint      NOT NULL CHECK (intended_amount_fen > 0),
    instrument          int         NOT NULL,
    note                text        NOT NULL DEFAULT '',
    term_months         int         NOT NULL,
    purpose             int         NOT NULL,
    recorded_at         timestamptz NOT NULL,
    demand_id           text        NOT NULL,
    lead_id             text        NOT NULL UNIQUE,
    lead_status         int         NOT NULL DEFAULT 0,
    lead_seq            int         NOT NULL DEFAULT 0,
    approved_amount_fen bigint      NOT NULL DEFAULT 0,
    granted_amount_fen  bigint      NOT NULL DEFAULT 0,
    UNIQUE (roadshow_id, institution_id, uscc)
);

-- Read models, kept from the demand service's topics (latest version / status wins).
CREATE TABLE enterprises (
    uscc          text PRIMARY KEY,
    name          text    NOT NULL,
    key_industry  int     NOT NULL,
    srdi_tier     int     NOT NULL,
    has_borrowed  boolean NOT NULL,
    special_zones text[]  NOT NULL DEFAULT '{}',
    version       bigint  NOT NULL
);
CREATE INDEX enterprises_srdi ON enterprises (srdi_tier, key_industry);

CREATE TABLE institutions (
    institution_id text PRIMARY KEY,
    name           text   NOT NULL,
    type           int    NOT NULL,
    version        bigint NOT NULL
);

CREATE TABLE demand_status (
    demand_id text PRIMARY KEY,
    uscc      text NOT NULL,
    channel   int  NOT NULL,
    status    int  NOT NULL,
    seq       int  NOT NULL
);
CREATE INDEX demand_status_uscc ON demand_status (uscc);
