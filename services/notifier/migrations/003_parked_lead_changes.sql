-- Lead outcomes whose enterprise is not known yet (an event from before LeadStatusChanged named
-- the enterprise, for a demand this notifier has not heard of): the enterprise's notice waits here
-- until the demand's enterprise is learnt (DemandMatched or DemandStatusChanged), never dropped.
CREATE TABLE parked_lead_changes (
    lead_id   text        NOT NULL,
    seq       int         NOT NULL,
    demand_id text        NOT NULL,
    change    jsonb       NOT NULL,  -- the LeadChange
    parked_at timestamptz NOT NULL,
    PRIMARY KEY (lead_id, seq)
);
CREATE INDEX parked_lead_changes_demand ON parked_lead_changes (demand_id);
