-- One message in a recipient's inbox. The id is derived from the fact it announces and the
-- recipient, so a replayed event never inserts a second row.
CREATE TABLE notifications (
    notification_id uuid        PRIMARY KEY,
    seq             bigserial   NOT NULL,
    recipient_kind  int         NOT NULL CHECK (recipient_kind > 0),
    recipient_id    text        NOT NULL CHECK (recipient_id <> ''),
    kind            text        NOT NULL,
    title           text        NOT NULL,  -- English
    body            text        NOT NULL,
    title_zh        text        NOT NULL,  -- Chinese
    body_zh         text        NOT NULL,
    demand_id       text        NOT NULL DEFAULT '',
    lead_id         text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    read            boolean     NOT NULL DEFAULT false
);
-- A recipient's inbox, newest first.
CREATE INDEX notifications_inbox ON notifications (recipient_kind, recipient_id, created_at DESC, seq DESC);
CREATE INDEX notifications_demand ON notifications (demand_id);
