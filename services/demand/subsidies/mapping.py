"""Subsidy funds and grants between the pure core and protobuf."""

from __future__ import annotations

from finmesh.subsidy.v1 import events_pb2 as sev
from finmesh.subsidy.v1 import subsidy_pb2 as spb
from meshkit.pbtime import set_ts, ts_to_dt
from services.demand.subsidies import domain as s


def fund_from_pb(x: spb.Fund) -> s.Fund:
    return s.Fund(fund_id=x.fund_id.strip(), name=x.name.strip(), quota_fen=x.quota_fen,
                  subsidy_rate_bps=x.subsidy_rate_bps, max_grant_fen=x.max_grant_fen,
                  first_loans_only=x.first_loans_only,
                  region_prefixes=tuple(sorted({p.strip() for p in x.region_prefixes})),
                  key_industries=tuple(sorted(set(x.key_industries))), max_loan_fen=x.max_loan_fen,
                  reserved_fen=x.reserved_fen, utilised_fen=x.utilised_fen, created_at=ts_to_dt(x.created_at))


def fund_to_pb(f: s.Fund) -> spb.Fund:
    out = spb.Fund(fund_id=f.fund_id, name=f.name, quota_fen=f.quota_fen, subsidy_rate_bps=f.subsidy_rate_bps,
                   max_grant_fen=f.max_grant_fen, first_loans_only=f.first_loans_only,
                   region_prefixes=list(f.region_prefixes), key_industries=list(f.key_industries),  # type: ignore[arg-type]
                   max_loan_fen=f.max_loan_fen, reserved_fen=f.reserved_fen, utilised_fen=f.utilised_fen,
                   available_fen=f.available_fen)
    set_ts(out.created_at, f.created_at)
    return out


def grant_to_pb(g: s.Grant) -> spb.Grant:
    loan = g.loan
    out = spb.Grant(grant_id=g.grant_id, fund_id=g.fund_id, lead_id=loan.lead_id, demand_id=loan.demand_id,
                    enterprise_uscc=loan.enterprise_uscc, institution_id=loan.institution_id,
                    loan_amount_fen=loan.amount_fen, term_months=loan.term_months, subsidy_fen=g.subsidy_fen,
                    status=int(g.status), reason=g.reason)  # type: ignore[arg-type]
    set_ts(out.granted_at, g.granted_at)
    set_ts(out.updated_at, g.updated_at)
    return out


def grant_from_pb(x: spb.Grant, *, region_code: str = "", key_industry: int = 0, has_borrowed: bool = False
                  ) -> s.Grant:
    granted_at = ts_to_dt(x.granted_at)
    assert granted_at is not None, "a stored grant has its time"
    loan = s.Loan(lead_id=x.lead_id, demand_id=x.demand_id, enterprise_uscc=x.enterprise_uscc,
                  institution_id=x.institution_id, amount_fen=x.loan_amount_fen, term_months=x.term_months,
                  region_code=region_code, key_industry=key_industry, has_borrowed=has_borrowed)
    return s.Grant(x.grant_id, x.fund_id, loan, x.subsidy_fen, s.GrantStatus(x.status), x.reason, granted_at,
                   ts_to_dt(x.updated_at) or granted_at)


def changed(g: s.Grant, f: s.Fund) -> sev.GrantChanged:
    return sev.GrantChanged(grant=grant_to_pb(g), fund_available_fen=f.available_fen)
