-- The transactional outbox and the inbox, created in every service's schema
-- (the search path points at the service's schema when this runs).

-- Events written in the same transaction as the state change they announce.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    topic       text        NOT NULL,
    key         bytea,
    payload     bytea       NOT NULL,
    event_type  text        NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now()
);

-- Events already handled by this service's consumers (idempotency).
CREATE TABLE inbox (
    event_id    text        NOT NULL,
    consumer    text        NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX inbox_handled_at ON inbox (handled_at);
