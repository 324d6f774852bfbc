"""Interest subsidies and the loan book, from the leads' outcomes, on the real broker and database.

Interest subsidies through SubsidyService and the leads' outcomes, on the real broker and
database: a fund is created once; an approved loan of an eligible enterprise gets a grant without
any application, its disbursal uses it (recomputed on what was disbursed, the rest given back), the
lender's settlement releases it for reuse, a fund without room grants nothing, and every grant
change is announced. A disbursed loan is kept with its maturity, and its renewal is warned of
once, 30 days before it matures; its lender may evaluate the enterprise, and others may not."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from demand_support import WAN, demand_with_leads, read_topic, register_bank, rpc_error
from google.protobuf.timestamp_pb2 import Timestamp
from institution_keys import OperatorAuth
from waiting import eventually

from finmesh.enterprise.v1 import enterprise_pb2 as ent
from finmesh.lead.v1 import lead_pb2 as ld
from finmesh.loan.v1.events_pb2 import LoanRenewalDue
from finmesh.subsidy.v1 import events_pb2 as sev
from finmesh.subsidy.v1 import subsidy_pb2 as spb
from finmesh.subsidy.v1 import subsidy_pb2_grpc as spb_grpc
from meshkit import topics
from meshkit.grpcserver import field_violations
from meshkit.lifecycle import Runtime, drain
from services.demand import store as demand_store
from services.demand.app import SCHEMA
from services.demand.loans.domain import add_months
from services.demand.loans.service import Loans
from services.demand.subsidies.service import Subsidies

if TYPE_CHECKING:
    from .conftest import Stubs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def subsidies(demand_rt: Runtime):  # noqa: ANN201
    async with grpc.aio.insecure_channel(f"127.0.0.1:{demand_rt.grpc_port}", interceptors=[OperatorAuth()]) as channel:
        yield spb_grpc.SubsidyServiceStub(channel)


def key(k: str) -> tuple[tuple[str, str]]:
    return (("x-api-key", k),)


async def approve(stubs: Stubs, lead_id: str, api_key: str, amount_fen: int, term_months: int) -> None:
    for outcome in (ld.LeadOutcome(status=ld.LEAD_STATUS_CONTACTED, contact=ld.Contact(method=ld.CONTACT_METHOD_PHONE)),
                    ld.LeadOutcome(status=ld.LEAD_STATUS_UNDER_REVIEW),
                    ld.LeadOutcome(status=ld.LEAD_STATUS_APPROVED, offer=ld.Offer(
                        amount_fen=amount_fen, rate_bps=385, term_months=term_months))):
        await stubs.leads.ReportLeadOutcome(ld.ReportLeadOutcomeRequest(lead_id=lead_id, outcome=outcome),
                                            metadata=key(api_key))


async def disburse(stubs: Stubs, lead_id: str, api_key: str, amount_fen: int, at: Timestamp) -> None:
    await stubs.leads.ReportLeadOutcome(ld.ReportLeadOutcomeRequest(lead_id=lead_id, outcome=ld.LeadOutcome(
        status=ld.LEAD_STATUS_DISBURSED, disbursement=ld.Disbursement(amount_fen=amount_fen, disbursed_at=at))),
        metadata=key(api_key))


async def grant_of(subsidies: spb_grpc.SubsidyServiceStub, fund_id: str, lead_id: str, status: int) -> spb.Grant | None:
    async def find() -> spb.Grant | None:
        found = await subsidies.ListGrants(spb.ListGrantsRequest(fund_id=fund_id, page_size=500))
        return next((g for g in found.grants if g.lead_id == lead_id), None)
    g = await eventually(find, lambda g: g is not None and g.status == status)
    return g if g is not None and g.status == status else None


async def test_loans_get_subsidies_without_application_and_give_the_quota_back(
    stubs: Stubs, subsidies: spb_grpc.SubsidyServiceStub, demand_rt: Runtime, producer, bootstrap: str  # noqa: ANN001
) -> None:
    fund_id = f"xiamen-{uuid.uuid4().hex[:6]}"
    terms = spb.Fund(fund_id=fund_id, name="Xiamen first-loan interest subsidy", quota_fen=30_000 * 100,
                     subsidy_rate_bps=100, max_grant_fen=20_000 * 100, first_loans_only=True,
                     region_prefixes=["3502"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{demand_rt.grpc_port}") as plain:  # funds are operators' to create
        err = await rpc_error(spb_grpc.SubsidyServiceStub(plain).CreateFund(spb.CreateFundRequest(fund=terms)))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    created = await subsidies.CreateFund(spb.CreateFundRequest(fund=terms))
    assert created.created and created.fund.available_fen == 30_000 * 100
    again = await subsidies.CreateFund(spb.CreateFundRequest(fund=terms))
    assert not again.created
    other = spb.Fund()
    other.CopyFrom(terms)
    other.quota_fen = 1
    err = await rpc_error(subsidies.CreateFund(spb.CreateFundRequest(fund=other)))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    err = await rpc_error(subsidies.CreateFund(spb.CreateFundRequest(fund=spb.Fund(fund_id="X", quota_fen=-1))))
    assert {"fund.fund_id", "fund.name", "fund.quota_fen", "fund.subsidy_rate_bps"} <= set(field_violations(err))

    (bank, bank_key), (other_bank, other_key) = await register_bank(stubs, "xmbank"), await register_bank(stubs, "cib")
    _, (first,) = await demand_with_leads(stubs, producer, [bank])
    _, (second,) = await demand_with_leads(stubs, producer, [bank])
    _, (third,) = await demand_with_leads(stubs, producer, [bank])

    # 4 million yuan for 24 months at 1%: 80,000 yuan, capped at 20,000; the fund has 30,000
    await approve(stubs, first, bank_key, 400 * WAN, 24)
    g = await grant_of(subsidies, fund_id, first, spb.GRANT_STATUS_RESERVED)
    assert g is not None and (g.subsidy_fen, g.institution_id) == (20_000 * 100, bank)
    # 1 million yuan for 12 months: 10,000 yuan, reserved too (the fund is full now)
    await approve(stubs, second, bank_key, 100 * WAN, 12)
    assert await grant_of(subsidies, fund_id, second, spb.GRANT_STATUS_RESERVED) is not None
    fund = (await subsidies.GetFund(spb.GetFundRequest(fund_id=fund_id))).fund
    assert (fund.reserved_fen, fund.available_fen) == (30_000 * 100, 0)
    # no room left: the third loan gets nothing from this fund
    await approve(stubs, third, bank_key, 100 * WAN, 12)
    await stubs.leads.ReportLeadOutcome(ld.ReportLeadOutcomeRequest(lead_id=third, outcome=ld.LeadOutcome(
        status=ld.LEAD_STATUS_DISBURSED, disbursement=ld.Disbursement(
            amount_fen=100 * WAN, disbursed_at=Timestamp(seconds=int(time.time()) - 60)))), metadata=key(bank_key))

    # the first is disbursed (3 million: 20,000 capped), the second at half its amount (5,000 back)
    for lead_id, amount in ((first, 300 * WAN), (second, 50 * WAN)):
        await stubs.leads.ReportLeadOutcome(ld.ReportLeadOutcomeRequest(lead_id=lead_id, outcome=ld.LeadOutcome(
            status=ld.LEAD_STATUS_DISBURSED, disbursement=ld.Disbursement(
                amount_fen=amount, disbursed_at=Timestamp(seconds=int(time.time()) - 60)))), metadata=key(bank_key))
    used = await grant_of(subsidies, fund_id, first, spb.GRANT_STATUS_UTILISED)
    assert used is not None and (used.subsidy_fen, used.loan_amount_fen) == (20_000 * 100, 300 * WAN)
    half = await grant_of(subsidies, fund_id, second, spb.GRANT_STATUS_UTILISED)
    assert half is not None and half.subsidy_fen == 5_000 * 100
    fund = (await subsidies.GetFund(spb.GetFundRequest(fund_id=fund_id))).fund
    assert (fund.reserved_fen, fund.utilised_fen, fund.available_fen) == (0, 25_000 * 100, 5_000 * 100)
    found = await subsidies.ListGrants(spb.ListGrantsRequest(fund_id=fund_id))
    assert third not in {x.lead_id for x in found.grants}  # approved when the fund was full

    # only the lender reports the loan settled; then the quota is back for reuse
    err = await rpc_error(subsidies.ReportLoanSettled(spb.ReportLoanSettledRequest(lead_id=first),
                                                      metadata=key(other_key)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    settled = await subsidies.ReportLoanSettled(spb.ReportLoanSettledRequest(lead_id=first), metadata=key(bank_key))
    assert settled.changed and settled.grant.status == spb.GRANT_STATUS_RELEASED
    again_settled = await subsidies.ReportLoanSettled(spb.ReportLoanSettledRequest(lead_id=first),
                                                      metadata=key(bank_key))
    assert not again_settled.changed
    fund = (await subsidies.GetFund(spb.GetFundRequest(fund_id=fund_id))).fund
    assert (fund.reserved_fen, fund.utilised_fen, fund.available_fen) == (0, 5_000 * 100, 25_000 * 100)

    records = await read_topic(bootstrap, topics.SUBSIDY_GRANTS_CHANGED.name, lambda f: len(f) >= 5,
                               lambda r: sev.GrantChanged.FromString(r.value).grant.fund_id == fund_id, linger=0.5)
    changes = [(e.grant.lead_id, e.grant.status, e.fund_available_fen)
               for e in (sev.GrantChanged.FromString(r.value) for r in records)]
    assert sorted(changes) == sorted([
        (first, spb.GRANT_STATUS_RESERVED, 10_000 * 100), (second, spb.GRANT_STATUS_RESERVED, 0),
        (first, spb.GRANT_STATUS_UTILISED, 0), (second, spb.GRANT_STATUS_UTILISED, 5_000 * 100),
        (first, spb.GRANT_STATUS_RELEASED, 25_000 * 100)])
    assert other_bank  # registered, never the lender

    # An approval never disbursed: its reservation lapses after 90 days (a pass at 89 days keeps it).
    _, (fourth,) = await demand_with_leads(stubs, producer, [bank])
    await approve(stubs, fourth, bank_key, 100 * WAN, 12)
    assert await grant_of(subsidies, fund_id, fourth, spb.GRANT_STATUS_RESERVED) is not None
    for days in (89, 91):
        later = datetime.now(UTC) + timedelta(days=days)
        await drain(Subsidies(demand_rt.pool, demand_rt.metrics, schema=SCHEMA, clock=lambda at=later: at).lapse_due)
        if days == 89:
            assert await grant_of(subsidies, fund_id, fourth, spb.GRANT_STATUS_RESERVED) is not None
            assert (await subsidies.GetFund(spb.GetFundRequest(fund_id=fund_id))).fund.reserved_fen == 10_000 * 100
    lapsed = await grant_of(subsidies, fund_id, fourth, spb.GRANT_STATUS_RELEASED)
    assert lapsed is not None and "lapsed" in lapsed.reason
    fund = (await subsidies.GetFund(spb.GetFundRequest(fund_id=fund_id))).fund
    assert (fund.reserved_fen, fund.available_fen) == (0, 25_000 * 100)


async def test_a_disbursed_loan_is_kept_and_its_renewal_warned_of_once_30_days_before_it_matures(
    stubs: Stubs, demand_rt: Runtime, subsidies: spb_grpc.SubsidyServiceStub, producer, bootstrap: str  # noqa: ANN001
) -> None:
    bank, bank_key = await register_bank(stubs, "renewbank")
    demand, (lead,) = await demand_with_leads(stubs, producer, [bank])
    await approve(stubs, lead, bank_key, 200 * WAN, 12)
    disbursed_at = Timestamp(seconds=int(time.time()) - 3600)
    await disburse(stubs, lead, bank_key, 180 * WAN, disbursed_at)
    kept = await eventually(lambda: demand_rt.pool.fetchrow("SELECT * FROM loans WHERE lead_id = $1", lead), bool)
    # Another loan of the same day, repaid early: only its lender may report it, once; it is never warned of.
    _, (early,) = await demand_with_leads(stubs, producer, [bank])
    await approve(stubs, early, bank_key, 100 * WAN, 12)
    await disburse(stubs, early, bank_key, 100 * WAN, disbursed_at)
    await eventually(lambda: demand_rt.pool.fetchrow("SELECT 1 FROM loans WHERE lead_id = $1", early), bool)

    # The lender, holding a lead for the enterprise, may evaluate it (its record counts the loan); others may not.
    uscc = demand.request.enterprise_uscc
    evaluation = (await stubs.enterprises.EvaluateEnterprise(ent.EvaluateEnterpriseRequest(uscc=uscc),
                                                             metadata=key(bank_key))).evaluation
    assert evaluation.score == sum(f.points for f in evaluation.factors) and evaluation.grade in "ABCD"
    record = {f.factor: f for f in evaluation.factors}["track_record"]
    assert (record.value, record.points) == ("1 loan(s) disbursed, 0 declined for credit history", 10)
    _, stranger_key = await register_bank(stubs, "stranger")
    for metadata in ((), key(stranger_key)):
        err = await rpc_error(stubs.enterprises.EvaluateEnterprise(ent.EvaluateEnterpriseRequest(uscc=uscc),
                                                                   metadata=metadata))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(subsidies.ReportLoanSettled(spb.ReportLoanSettledRequest(lead_id=early),
                                                      metadata=key(stranger_key)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    repaid = await subsidies.ReportLoanSettled(spb.ReportLoanSettledRequest(lead_id=early), metadata=key(bank_key))
    assert repaid.changed and repaid.HasField("loan_settled_at")
    again = await subsidies.ReportLoanSettled(spb.ReportLoanSettledRequest(lead_id=early), metadata=key(bank_key))
    assert not again.changed and again.loan_settled_at == repaid.loan_settled_at
    err = await rpc_error(subsidies.ReportLoanSettled(spb.ReportLoanSettledRequest(lead_id=f"no-{uuid.uuid4().hex}"),
                                                      metadata=key(bank_key)))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # A bank that declined its lead for an enterprise (for its credit history) no longer sees it; its record shows it.
    declining, declining_key = await register_bank(stubs, "decliner")
    declined_demand, (declined,) = await demand_with_leads(stubs, producer, [declining])
    other = declined_demand.request.enterprise_uscc
    assert (await stubs.enterprises.EvaluateEnterprise(ent.EvaluateEnterpriseRequest(uscc=other),
                                                       metadata=key(declining_key))).evaluation.score > 0
    for outcome in (ld.LeadOutcome(status=ld.LEAD_STATUS_CONTACTED, contact=ld.Contact(method=ld.CONTACT_METHOD_PHONE)),
                    ld.LeadOutcome(status=ld.LEAD_STATUS_DECLINED, decline=ld.Decline(
                        reason_code=ld.DECLINE_REASON_CREDIT_HISTORY, text="overdue loans elsewhere"))):
        await stubs.leads.ReportLeadOutcome(ld.ReportLeadOutcomeRequest(lead_id=declined, outcome=outcome),
                                            metadata=key(declining_key))
    err = await rpc_error(stubs.enterprises.EvaluateEnterprise(ent.EvaluateEnterpriseRequest(uscc=other),
                                                               metadata=key(declining_key)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await demand_store.track_record(demand_rt.pool, other) == (0, 1)  # what its evaluation will count
    matures = add_months(disbursed_at.ToDatetime(tzinfo=UTC).date(), 12)
    assert (kept["amount_fen"], kept["matures_on"], kept["first_loan"]) == (180 * WAN, matures, True)

    day_before = datetime.combine(matures - timedelta(days=31), datetime.min.time(), UTC)
    on_the_day = day_before + timedelta(days=1)
    replicas = [loans_at(demand_rt, at) for at in (day_before, on_the_day)]
    assert await replicas[0].warn_due() == 0  # 31 days before: not yet
    assert await replicas[1].warn_due() >= 1
    assert await replicas[1].warn_due() == 0  # once
    [record] = await read_topic(bootstrap, topics.LOAN_RENEWALS_DUE.name, bool,
                                lambda r: LoanRenewalDue.FromString(r.value).lead_id == lead, linger=0.5)
    due = LoanRenewalDue.FromString(record.value)
    assert (due.enterprise_uscc, due.institution_id, due.amount_fen, due.rate_bps, due.term_months) == (
        demand.request.enterprise_uscc, bank, 180 * WAN, 385, 12)
    assert (due.matures_on, due.days_to_maturity, due.first_loan) == (matures.isoformat(), 30, True)
    assert await demand_rt.pool.fetchval("SELECT warned_at FROM loans WHERE lead_id = $1", early) is None
    assert await read_topic(bootstrap, topics.LOAN_RENEWALS_DUE.name, lambda found: False,
                            lambda r: LoanRenewalDue.FromString(r.value).lead_id == early, timeout=2) == []

    # A loan reported disbursed after it matured (13 months ago, for 12): no warning is sent for it.
    _, (late,) = await demand_with_leads(stubs, producer, [bank])
    await approve(stubs, late, bank_key, 100 * WAN, 12)
    await disburse(stubs, late, bank_key, 100 * WAN, Timestamp(seconds=int(time.time()) - 395 * 86400))
    await eventually(lambda: demand_rt.pool.fetchrow("SELECT 1 FROM loans WHERE lead_id = $1", late), bool)
    now = datetime.now(UTC)
    await drain(loans_at(demand_rt, now).warn_due)
    assert await demand_rt.pool.fetchval("SELECT warned_at FROM loans WHERE lead_id = $1", late) is not None
    assert await read_topic(bootstrap, topics.LOAN_RENEWALS_DUE.name, lambda found: False,
                            lambda r: LoanRenewalDue.FromString(r.value).lead_id == late, timeout=3) == []

    # A loan reported repaid while the loan book has not booked it yet (as if its consumer lagged):
    # UNAVAILABLE, not NOT_FOUND, so the lender's system tries again.
    await demand_rt.pool.execute("DELETE FROM loans WHERE lead_id = $1", late)
    err = await rpc_error(subsidies.ReportLoanSettled(spb.ReportLoanSettledRequest(lead_id=late),
                                                      metadata=key(bank_key)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err


def loans_at(rt: Runtime, at: datetime) -> Loans:
    """The loan book of the service under test, with its clock at ``at``."""
    subsidies = Subsidies(rt.pool, rt.metrics, schema=SCHEMA, clock=lambda: at)
    return Loans(rt.pool, subsidies, schema=SCHEMA, clock=lambda: at)
