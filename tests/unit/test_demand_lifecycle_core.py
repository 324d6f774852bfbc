"""The demand service's pure core beyond validation: the lead life cycle, institutions' outcomes
and what they do to the demand, window filings, duplicates, withdrawal, enterprise updates."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from finmesh.lead.v1 import lead_pb2 as lpb
from meshkit.errors import FailedPrecondition, PermissionDenied, ValidationFailed, Violations
from services.demand import domain as d
from services.demand import mapping

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
S, L = d.DemandStatus, d.LeadStatus
USCC = "91350100M000100Y43"


def enterprise() -> d.Enterprise:
    return d.Enterprise(uscc=USCC, name="Xiamen Precision Tools", region_code="350200", city="Xiamen",
                        key_industry=3, size=2, srdi_tier=3, founded_year=2012)


def request(**kw: object) -> d.DemandRequest:
    base = d.DemandRequest(enterprise_uscc=USCC, amount_fen=5_000_000_00, least_acceptable_amount_fen=3_000_000_00,
                           term_months=24, max_rate_bps=450, loan_category=6, purpose=2)
    return replace(base, **kw)


def lead(n: int = 1, institution: str = "icbc-xm") -> d.Lead:
    raw = d.Lead(lead_id=f"lead-{n}", demand_id="dem-1", institution_id=institution, product_id=f"p-{n}",
                 product_version=1, origin=1, score=80, rank=n, explanation=(), rules_version="r1", status=1,
                 created_at=NOW, contact_due_at=NOW + timedelta(hours=72))
    return d.deliver(raw, at=NOW)


def report(x: d.Lead, status: L, **kw: object) -> d.Lead:
    new, changed = d.apply_outcome(x, d.Outcome(status=status, **kw), at=NOW, actor=f"institution:{x.institution_id}")
    assert changed
    return new


def contacted(x: d.Lead) -> d.Lead:
    return report(x, L.CONTACTED, contact_method=d.ContactMethod.PHONE)


# -- the lead life cycle -----------------------------------------------------------------------------


def test_leads_are_recorded_created_then_delivered() -> None:
    x = lead()
    assert x.status == L.DELIVERED
    assert [(h.status, h.actor) for h in x.history] == [(L.CREATED, "matcher"), (L.DELIVERED, "matcher")]


def test_the_lead_table_is_domain_md_s() -> None:
    path = [L.CREATED, L.DELIVERED, L.CONTACTED, L.UNDER_REVIEW, L.APPROVED, L.DISBURSED]
    for a, b in zip(path, path[1:], strict=False):
        d.check_lead_transition(a, b)
    for s in (L.DELIVERED, L.CONTACTED, L.UNDER_REVIEW):
        d.check_lead_transition(s, L.DECLINED)
        d.check_lead_transition(s, L.WITHDRAWN)
    d.check_lead_transition(L.SLA_BREACHED, L.EXPIRED)
    assert set(d.LEAD_TRANSITIONS) == set(L) - {L.UNSPECIFIED}
    assert d.LEAD_TERMINAL == {L.DISBURSED, L.DECLINED, L.WITHDRAWN, L.EXPIRED}


@pytest.mark.parametrize(("a", "b"), [
    (L.DELIVERED, L.APPROVED), (L.CONTACTED, L.DISBURSED), (L.DECLINED, L.CONTACTED), (L.APPROVED, L.DECLINED),
    (L.DISBURSED, L.WITHDRAWN), (L.CREATED, L.CONTACTED),
])
def test_illegal_lead_transitions_are_refused(a: L, b: L) -> None:
    with pytest.raises(FailedPrecondition, match=f"{a.name} to {b.name}"):
        d.check_lead_transition(a, b)


def test_an_outcome_skipping_a_step_is_refused_and_nothing_changes() -> None:
    x = lead()
    with pytest.raises(FailedPrecondition):
        d.apply_outcome(x, d.Outcome(status=L.APPROVED, offer_amount_fen=1, offer_rate_bps=400, offer_term_months=12),
                        at=NOW, actor="institution:icbc-xm")
    assert x.status == L.DELIVERED and len(x.history) == 2


def test_outcomes_record_their_details_and_a_readable_reason() -> None:
    x = contacted(lead())
    assert x.reported.contact_method == d.ContactMethod.PHONE and x.reported.contacted_at == NOW
    x = report(x, L.UNDER_REVIEW)
    x = report(x, L.APPROVED, offer_amount_fen=4_000_000_00, offer_rate_bps=385, offer_term_months=24)
    assert x.history[-1].reason == "approved: 4,000,000.00 yuan at 3.85% for 24 months"
    x = report(x, L.DISBURSED, disbursed_amount_fen=4_000_000_00, disbursed_at=NOW)
    assert x.status == L.DISBURSED and x.reported.disbursed_amount_fen == 4_000_000_00
    assert [h.status for h in x.history] == [L.CREATED, L.DELIVERED, L.CONTACTED, L.UNDER_REVIEW, L.APPROVED,
                                             L.DISBURSED]
    assert all(h.actor == "institution:icbc-xm" for h in x.history[2:])


def test_a_repeated_report_changes_nothing_and_a_conflicting_one_is_refused() -> None:
    x = contacted(lead())
    again, changed = d.apply_outcome(x, d.Outcome(status=L.CONTACTED, contact_method=d.ContactMethod.PHONE), at=NOW,
                                     actor="institution:icbc-xm")
    assert not changed and again is x
    x = report(x, L.UNDER_REVIEW)
    stale, changed = d.apply_outcome(x, d.Outcome(status=L.CONTACTED, contact_method=d.ContactMethod.PHONE), at=NOW,
                                     actor="institution:icbc-xm")
    assert not changed and stale is x  # a late duplicate of an earlier report
    with pytest.raises(FailedPrecondition, match="other details"):
        d.apply_outcome(x, d.Outcome(status=L.CONTACTED, contact_method=d.ContactMethod.VISIT), at=NOW, actor="i")


def test_every_wrong_outcome_field_is_named_at_once() -> None:
    def fields(o: d.Outcome) -> set[str]:
        v = Violations()
        d.check_outcome(v, o, now=NOW)
        return {x.field for x in v.items}

    assert fields(d.Outcome(status=L.WITHDRAWN, note="x" * 1001)) == {"outcome.status", "outcome.note"}
    assert fields(d.Outcome(status=L.CONTACTED, contact_method=99, contacted_at=NOW + timedelta(days=1))) == {
        "outcome.contact.method", "outcome.contact.contacted_at"}
    assert fields(d.Outcome(status=L.APPROVED, offer_amount_fen=0, offer_rate_bps=3601, offer_term_months=361)) == {
        "outcome.offer.amount_fen", "outcome.offer.rate_bps", "outcome.offer.term_months"}
    assert fields(d.Outcome(status=L.DISBURSED, disbursed_amount_fen=-1)) == {
        "outcome.disbursement.amount_fen", "outcome.disbursement.disbursed_at"}
    assert fields(d.Outcome(status=L.DECLINED, decline_reason=0)) == {"outcome.decline.reason_code"}
    assert fields(d.Outcome(status=L.DECLINED, decline_reason=d.DeclineReason.OTHER)) == {"outcome.decline.text"}
    assert fields(d.Outcome(status=L.DECLINED, decline_reason=d.DeclineReason.HIGH_LEVERAGE)) == set()


# -- what outcomes do to the demand ------------------------------------------------------------------------


def progress(current: S, *leads: d.Lead, amount: int = 5_000_000_00, least: int = 3_000_000_00) -> list[S]:
    return d.demand_progress(current, leads, amount_fen=amount, least_acceptable_amount_fen=least)


def test_outcomes_drive_the_demand_forward() -> None:
    a, b = lead(1), lead(2, "ccb-xm")
    assert progress(S.LEADS_ISSUED, a, b) == []
    a = contacted(a)
    assert progress(S.LEADS_ISSUED, a, b) == [S.IN_CONTACT]
    assert progress(S.IN_CONTACT, a, b) == []
    a = report(a, L.UNDER_REVIEW)
    assert progress(S.IN_CONTACT, a, b) == [S.IN_PROCESS]
    a = report(report(a, L.APPROVED, offer_amount_fen=2_000_000_00, offer_rate_bps=400, offer_term_months=24),
               L.DISBURSED, disbursed_amount_fen=2_000_000_00, disbursed_at=NOW)
    assert progress(S.IN_PROCESS, a, b) == []  # 2 million is below the least acceptable 3 million
    assert progress(S.IN_PROCESS, a, b, least=0, amount=2_000_000_00) == [S.FUNDED]
    assert progress(S.IN_PROCESS, a, b, least=2_000_000_00) == [S.FUNDED]
    assert progress(S.WITHDRAWN, a, b, least=1) == []  # a demand that is over is not moved


def test_all_declined_from_any_stage_and_only_when_every_lead_is() -> None:
    a, b = lead(1), lead(2, "ccb-xm")
    a = report(a, L.DECLINED, decline_reason=d.DeclineReason.INSUFFICIENT_COLLATERAL)
    assert progress(S.LEADS_ISSUED, a, b) == []
    b = report(contacted(b), L.DECLINED, decline_reason=d.DeclineReason.OUTSIDE_RISK_APPETITE)
    assert progress(S.LEADS_ISSUED, a, b) == [S.ALL_DECLINED]
    assert progress(S.IN_CONTACT, a, b) == [S.ALL_DECLINED]
    for s in (S.LEADS_ISSUED, S.IN_CONTACT, S.IN_PROCESS):
        d.check_transition(s, S.ALL_DECLINED)


def breached(x: d.Lead) -> d.Lead:
    return d.lead_transition(x, L.SLA_BREACHED, at=NOW, actor="notifier", reason=d.sla_breach_reason(True))


def test_leads_whose_clock_ran_out_count_as_not_taken_up() -> None:
    a, b = breached(lead(1)), lead(2, "ccb-xm")
    assert progress(S.LEADS_ISSUED, a, b) == []  # b may still call
    assert progress(S.LEADS_ISSUED, a, breached(b)) == [S.ALL_DECLINED]  # nobody called in time
    declined = report(b, L.DECLINED, decline_reason=d.DeclineReason.CREDIT_HISTORY)
    assert progress(S.IN_CONTACT, a, declined) == [S.ALL_DECLINED]
    assert "no institution took it up" in d.progress_reason(S.ALL_DECLINED, declined)


def test_a_breached_lead_expires_once_the_demand_goes_on_to_other_institutions() -> None:
    a, b = breached(lead(1)), contacted(lead(2, "ccb-xm"))
    assert d.rerouted((a, b), (), at=NOW, actor="matcher") == (a, b)
    after = d.rerouted((a, b), (lead(3, "boc"), lead(4, "abc")), at=NOW, actor="matcher")
    assert [x.status for x in after] == [L.EXPIRED, L.CONTACTED]
    assert after[0].history[-1].reason == "re-routed: the demand went on to abc, boc"


def test_the_breach_reason_says_whether_the_demand_goes_on() -> None:
    assert "next-best institution" in d.sla_breach_reason(True)
    assert "consent" in d.sla_breach_reason(False) and "next-best" not in d.sla_breach_reason(False)


def test_closing_a_demand_closes_the_leads_still_being_worked() -> None:
    approved = report(report(contacted(lead(1)), L.UNDER_REVIEW), L.APPROVED, offer_amount_fen=1, offer_rate_bps=1,
                      offer_term_months=1)
    declined = report(lead(5, "cib"), L.DECLINED, decline_reason=d.DeclineReason.CREDIT_HISTORY)
    leads = (approved, contacted(lead(2, "ccb-xm")), lead(3, "boc"), breached(lead(4, "abc")), declined)
    closed = d.close_leads(leads, at=NOW, actor=d.SERVICE_ACTOR, reason="the demand expired")
    assert [x.status for x in closed] == [L.APPROVED, L.WITHDRAWN, L.WITHDRAWN, L.EXPIRED, L.DECLINED]
    assert {x.history[-1].reason for x in closed[1:4]} == {"the demand expired"}
    assert closed[0] is approved and closed[4] is declined  # an offer made, and a closed lead, stay as they are


def test_a_jump_walks_every_step() -> None:
    a = report(report(report(contacted(lead()), L.UNDER_REVIEW), L.APPROVED, offer_amount_fen=1, offer_rate_bps=1,
                      offer_term_months=1), L.DISBURSED, disbursed_amount_fen=5_000_000_00, disbursed_at=NOW)
    assert progress(S.LEADS_ISSUED, a) == [S.IN_CONTACT, S.IN_PROCESS, S.FUNDED]


# -- intake: window filings and duplicates -------------------------------------------------------------------


def accept(channel: d.Channel = d.Channel.API, **kw: object) -> d.Demand:
    return d.accept(demand_id="dem-1", request=request(), channel=channel, idempotency_key="k", actor="a",
                    enterprise=enterprise(), now=NOW, **kw)  # type: ignore[arg-type]


def test_a_window_filing_waits_for_the_enterprise_then_matches() -> None:
    x = accept(d.Channel.OFFLINE_WINDOW, operator_id="op-7")
    assert x.status == S.NEEDS_INFO and x.operator_id == "op-7"
    assert "operator op-7" in x.history[0].reason
    with pytest.raises(PermissionDenied):
        d.confirm(x, uscc="91110000600037341L", at=NOW)
    y = d.confirm(x, uscc=USCC, at=NOW)
    assert [h.status for h in y.history] == [S.SUBMITTED, S.NEEDS_INFO, S.SUBMITTED, S.MATCHING]
    assert y.history[2].actor == f"enterprise:{USCC}"
    with pytest.raises(FailedPrecondition):
        d.confirm(y, uscc=USCC, at=NOW)  # confirmed once only


def test_a_duplicate_is_stored_final_and_linked() -> None:
    x = accept(duplicate_of="dem-0")
    assert x.status == S.DUPLICATE and x.duplicate_of == "dem-0" and S.DUPLICATE in d.TERMINAL
    assert [h.status for h in x.history] == [S.SUBMITTED, S.DUPLICATE]


def test_find_duplicate_needs_the_same_need_from_another_channel_within_the_window_still_live() -> None:
    r = request()

    def recent(**kw: object) -> d.RecentDemand:
        base = d.RecentDemand("dem-0", USCC, r.amount_fen, r.term_months, r.loan_category, S.MATCHING,
                              NOW - timedelta(hours=1), d.Channel.ONLINE_PORTAL)
        return replace(base, **kw)

    api = d.Channel.API
    assert d.find_duplicate(r, api, [recent()], now=NOW) == "dem-0"
    assert d.find_duplicate(r, api, [recent(demand_id="b", submitted_at=NOW - timedelta(hours=2)), recent()],
                            now=NOW) == "b"  # the earliest
    for other in (recent(amount_fen=1), recent(term_months=12), recent(loan_category=1),
                  recent(enterprise_uscc="91110000600037341L"), recent(status=S.WITHDRAWN), recent(status=S.NO_MATCH),
                  recent(submitted_at=NOW - d.DUPLICATE_WINDOW - timedelta(seconds=1)),
                  recent(channel=api)):  # within one channel, two keys are two requests
        assert d.find_duplicate(r, api, [other], now=NOW) is None, other


def test_withdrawal_takes_the_open_leads_with_it() -> None:
    approved = report(report(contacted(lead(1)), L.UNDER_REVIEW), L.APPROVED, offer_amount_fen=1, offer_rate_bps=1,
                      offer_term_months=1)
    x = replace(accept(), status=S.IN_PROCESS, leads=(approved, contacted(lead(2, "ccb-xm")), lead(3, "boc")))
    with pytest.raises(PermissionDenied):
        d.withdraw(x, uscc="91110000600037341L", reason="", at=NOW)
    with pytest.raises(ValidationFailed):
        d.withdraw(x, uscc=USCC, reason="x" * 501, at=NOW)
    y = d.withdraw(x, uscc=USCC, reason="found money elsewhere", at=NOW)
    assert y.status == S.WITHDRAWN and y.history[-1].reason == "found money elsewhere"
    assert [lead.status for lead in y.leads] == [L.APPROVED, L.WITHDRAWN, L.WITHDRAWN]
    with pytest.raises(FailedPrecondition):
        d.withdraw(y, uscc=USCC, reason="", at=NOW)


# -- enterprises ------------------------------------------------------------------------------------------------


def test_an_update_takes_only_the_masked_fields() -> None:
    current = replace(enterprise(), version=3, registered_at=NOW)
    incoming = replace(enterprise(), name="Renamed", employees=99)
    assert d.updated_enterprise(current, incoming, ["employees"]) == replace(current, employees=99)
    assert d.updated_enterprise(current, incoming, []).name == "Renamed"
    with pytest.raises(ValidationFailed) as info:
        d.updated_enterprise(current, incoming, ["uscc", "nope"])
    assert [v.field for v in info.value.violations] == ["update_mask"]


def test_demand_limits_on_repeated_fields_and_validity() -> None:
    v = Violations()
    d.check_demand(v, request(preferred_institution_ids=tuple(f"bank-{n}" for n in range(21)),
                              valid_until=NOW + timedelta(days=400)), now=NOW)
    assert {x.field for x in v.items} == {"demand.preferred_institution_ids", "demand.valid_until"}


# -- contracts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("enum", "pb_enum", "prefix"), [
    (d.LeadStatus, lpb.LeadStatus, "LEAD_STATUS_"),
    (d.ContactMethod, lpb.ContactMethod, "CONTACT_METHOD_"),
    (d.DeclineReason, lpb.DeclineReason, "DECLINE_REASON_"),
])
def test_lead_enumerations_match_the_contracts(enum, pb_enum, prefix) -> None:  # noqa: ANN001
    assert {m.name: m.value for m in enum} == {k.removeprefix(prefix): v for k, v in pb_enum.items()}


def test_a_lead_with_its_outcome_maps_to_the_contract() -> None:
    x = report(contacted(lead()), L.DECLINED, decline_reason=d.DeclineReason.HIGH_LEVERAGE, decline_text="too much")
    m = mapping.lead_to_pb(x)
    assert [h.status for h in m.history] == [1, 2, 3, 7]
    assert m.contact.method == lpb.CONTACT_METHOD_PHONE and m.decline.text == "too much"
    assert not m.HasField("offer") and not m.HasField("disbursement")
    event = mapping.lead_status_changed(x, 4, "E-1")
    assert event.previous == lpb.LEAD_STATUS_CONTACTED and event.change.status == lpb.LEAD_STATUS_DECLINED
    assert event.enterprise_uscc == "E-1"
    outcome = lpb.LeadOutcome(status=lpb.LEAD_STATUS_APPROVED, offer=lpb.Offer(amount_fen=5, rate_bps=6, term_months=7))
    assert mapping.outcome_from_pb(outcome) == d.Outcome(status=5, offer_amount_fen=5, offer_rate_bps=6,
                                                         offer_term_months=7)


# -- leads added later (DemandMatched with `additional`) ------------------------------------------------------------


def raw_lead(n: int) -> d.Lead:
    return d.Lead(lead_id=f"late-{n}", demand_id="dem-1", institution_id=f"bank-{n}", product_id=f"p-{n}",
                  product_version=1, origin=5, score=70, rank=n, explanation=(), rules_version="r1", status=1,
                  created_at=NOW, contact_due_at=None)


def test_additional_leads_keep_a_worked_demand_s_status_and_reopen_a_finished_match() -> None:
    late = (raw_lead(1),)
    for s in (S.LEADS_ISSUED, S.IN_CONTACT, S.IN_PROCESS, S.FUNDED):
        out = d.match_outcome(s, late, "", at=NOW, additional=True)
        assert out.status == s and out.changes == () and out.leads[0].status == L.DELIVERED
    for s in (S.NO_MATCH, S.ALL_DECLINED):
        out = d.match_outcome(s, late, "", at=NOW, additional=True)
        assert [c.status for c in out.changes] == [S.MATCHING, S.LEADS_ISSUED] and out.status == S.LEADS_ISSUED
    out = d.match_outcome(S.WITHDRAWN, late, "", at=NOW, additional=True)
    assert out.changes == () and out.leads[0].status == L.WITHDRAWN
    with pytest.raises(FailedPrecondition):  # a first match only for a demand being matched
        d.match_outcome(S.NO_MATCH, late, "", at=NOW)
