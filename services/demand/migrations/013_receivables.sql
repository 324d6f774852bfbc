-- The receivable registry (services/demand/receivables): each receivable as its protobuf
-- (finmesh.receivable.v1.Receivable, history included), with the columns it is found by.
CREATE TABLE receivables (
    receivable_id   text        PRIMARY KEY,
    supplier_uscc   text        NOT NULL,
    debtor_uscc     text        NOT NULL,
    fingerprint     text        NOT NULL,
    number_norm     text        NOT NULL,  -- the normalised document number
    document_date   date        NOT NULL,
    face_amount_fen bigint      NOT NULL,
    status          smallint    NOT NULL,
    financier_id    text        NOT NULL DEFAULT '',
    next_check      date,                  -- when the maturity pass looks at it next (NULL: never)
    body            bytea       NOT NULL,
    updated_at      timestamptz NOT NULL
);
-- Two live receivables never share a fingerprint (DISPUTED = 3 and BLOCKED_DUPLICATE = 4 are not live).
CREATE UNIQUE INDEX receivables_live_fingerprint ON receivables (fingerprint) WHERE status NOT IN (3, 4);
CREATE INDEX receivables_parties ON receivables (debtor_uscc, supplier_uscc);
CREATE INDEX receivables_supplier ON receivables (supplier_uscc, receivable_id);
CREATE INDEX receivables_financier ON receivables (financier_id, receivable_id) WHERE financier_id <> '';
CREATE INDEX receivables_maturity ON receivables (next_check) WHERE next_check IS NOT NULL;
