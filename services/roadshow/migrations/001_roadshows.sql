CREATE TABLE roadshows (
    roadshow_id     text PRIMARY KEY,
    month           text        NOT NULL,
    theme           text        NOT NULL,
    theme_industry  int         NOT NULL DEFAULT 0,
    theme_zone      text        NOT NULL DEFAULT '',
    city            text        NOT NULL,
    held_at         timestamptz,
    capacity        int         NOT NULL CHECK (capacity > 0),
    status          int         NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX roadshows_month ON roadshows (month);
