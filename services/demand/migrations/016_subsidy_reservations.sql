-- Reservations of approved loans never disbursed lapse (services/demand/subsidies): found by age.
CREATE INDEX subsidy_grants_reserved ON subsidy_grants (updated_at) WHERE status = 1;
