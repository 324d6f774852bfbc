-- The loan book (services/demand/loans): every loan disbursed on a lead, kept from the leads' status
-- changes, with its maturity and when its renewal warning is due and was sent.
CREATE TABLE loans (
    lead_id         text        PRIMARY KEY,
    demand_id       text        NOT NULL,
    enterprise_uscc text        NOT NULL,
    institution_id  text        NOT NULL,
    amount_fen      bigint      NOT NULL,
    rate_bps        int         NOT NULL,
    term_months     int         NOT NULL,
    disbursed_at    timestamptz NOT NULL,
    first_loan      boolean     NOT NULL,
    matures_on      date        NOT NULL,
    warn_on         date        NOT NULL,
    warned_at       timestamptz
);
CREATE INDEX loans_renewal_due ON loans (warn_on) WHERE warned_at IS NULL;
CREATE INDEX loans_enterprise ON loans (enterprise_uscc);
