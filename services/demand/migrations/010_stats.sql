-- Platform statistics (services/demand/stats.py) count registrations and approvals by time range
-- (demands by submitted_at use demands_submitted of 002). Approvals are few: a partial index.
CREATE INDEX enterprises_registered_at ON enterprises (registered_at);
CREATE INDEX lead_history_approved ON lead_history (at, lead_id) WHERE status = 5; -- LEAD_STATUS_APPROVED
