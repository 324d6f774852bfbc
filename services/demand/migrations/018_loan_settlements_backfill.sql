-- Loans whose subsidy grant a lender released through ReportLoanSettled before the loan book kept
-- settlements (017) were repaid then: they leave the renewal watch too. A grant released before the
-- loan was disbursed (its reservation lapsed) says nothing about the loan.
UPDATE loans SET settled_at = g.updated_at
FROM subsidy_grants g
WHERE g.lead_id = loans.lead_id AND g.status = 3 AND g.updated_at >= loans.disbursed_at
  AND loans.settled_at IS NULL AND loans.warned_at IS NULL;
