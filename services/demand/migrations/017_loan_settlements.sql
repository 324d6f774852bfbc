-- A loan its lender reports repaid (SubsidyService.ReportLoanSettled), at maturity or early, leaves
-- the renewal watch: no warning is sent for it.
ALTER TABLE loans ADD COLUMN settled_at timestamptz;
DROP INDEX loans_renewal_due;
CREATE INDEX loans_renewal_due ON loans (warn_on) WHERE warned_at IS NULL AND settled_at IS NULL;
