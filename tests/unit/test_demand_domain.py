"""The demand service's pure core: USCC check character, validation, life cycle."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from finmesh.common.v1 import finance_pb2 as fpb
from finmesh.demand.v1 import demand_pb2 as dpb
from finmesh.institution.v1 import institution_pb2 as ipb
from meshkit.errors import FailedPrecondition, ValidationFailed, Violations
from services.demand import domain as d
from services.demand import mapping

NOW = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
S = d.DemandStatus


# -- USCC -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [
    "91350100M000100Y43",  # the sample code printed in GB 32100-2015 guides
    "91110000600037341L",
    "91440300708461136T",
])
def test_real_looking_codes_pass(code: str) -> None:
    assert d.valid_uscc(code), d.uscc_problem(code)


def test_check_character_is_computed_from_the_weights() -> None:
    # 9 1 3 5 0 1 0 0 M(21) 0 0 0 1 0 0 Y(30) 4 with weights 1,3,9,...: sum % 31 = 28, 31 - 28 = 3
    assert d.uscc_check_char("91350100M000100Y4") == "3"
    # a remainder of 0 gives 31, which is written as '0'
    for first17 in ("91350100M000100Y4", "92440101MA5CL6YB1", "12100000400000624"):
        total = sum(d.USCC_CHARSET.index(c) * w for c, w in zip(first17, d.USCC_WEIGHTS, strict=True))
        expected = (31 - total % 31) % 31
        assert d.uscc_check_char(first17) == d.USCC_CHARSET[expected]


def test_computed_codes_round_trip() -> None:
    for first17 in ("91330106MA2H1XQ70", "12100000400000624", "52110000500021676"):
        code = first17 + d.uscc_check_char(first17)
        assert d.valid_uscc(code)


@pytest.mark.parametrize(("code", "why"), [
    ("91350100M000100Y44", "check character"),  # wrong check
    ("91350100M000100Y4", "18 characters"),  # too short
    ("91350100M000100Y433", "18 characters"),  # too long
    ("91350100I000100Y43", "outside"),  # I is not in the charset
    ("91350100m000100y43", "outside"),  # lower case
    ("", "18 characters"),
])
def test_invalid_codes_are_refused_with_a_reason(code: str, why: str) -> None:
    assert not d.valid_uscc(code)
    assert why in (d.uscc_problem(code) or "")


# -- validation ---------------------------------------------------------------------------------------

USCC = "91350100M000100Y43"


def enterprise(**kw: object) -> d.Enterprise:
    base = d.Enterprise(uscc=USCC, name="Xiamen Precision Tools Co.", region_code="350200", city="Xiamen",
                        industry_code="C3421", key_industry=d.KeyIndustry.INTELLIGENT_EQUIPMENT,
                        size=d.EnterpriseSize.SMALL, srdi_tier=d.SrdiTier.PROVINCIAL, founded_year=2012)
    return replace(base, **kw)


def request(**kw: object) -> d.DemandRequest:
    base = d.DemandRequest(enterprise_uscc=USCC, amount_fen=5_000_000_00, term_months=24, max_rate_bps=450,
                           purpose=d.Purpose.EQUIPMENT_RENEWAL, collateral_offered=(d.Collateral.EQUIPMENT,))
    return replace(base, **kw)


def violations(fn, *args, **kw) -> dict[str, str]:  # noqa: ANN001
    with pytest.raises(ValidationFailed) as info:
        fn(*args, **kw)
    return {v.field: v.description for v in info.value.violations}


def test_a_good_enterprise_passes() -> None:
    assert d.validate_enterprise(enterprise(), now=NOW) == enterprise()


def test_every_wrong_enterprise_field_is_named_at_once() -> None:
    bad = enterprise(uscc="91350100M000100Y44", name=" ", region_code="3502", key_industry=0, size=9,
                     srdi_tier=0, founded_year=2099, tax_credit_grade="Z")
    assert set(violations(d.validate_enterprise, bad, now=NOW)) == {
        "enterprise.uscc", "enterprise.name", "enterprise.region_code", "enterprise.key_industry",
        "enterprise.size", "enterprise.srdi_tier", "enterprise.founded_year", "enterprise.tax_credit_grade",
    }


def check(req: d.DemandRequest) -> dict[str, str]:
    v = Violations()
    d.check_key(v, "request_id", "r-1")
    d.check_demand(v, req, now=NOW)
    return {x.field: x.description for x in v.items}


def test_a_good_demand_passes() -> None:
    assert check(request()) == {}
    assert check(request(amount_fen=d.MAX_AMOUNT_FEN, least_acceptable_amount_fen=d.MAX_AMOUNT_FEN,
                         term_months=360, max_rate_bps=3600, valid_until=NOW + timedelta(days=1))) == {}


def test_every_wrong_demand_field_is_named_at_once() -> None:
    bad = request(enterprise_uscc="X", amount_fen=0, least_acceptable_amount_fen=-1, term_months=361,
                  max_rate_bps=3601, loan_category=99, purpose=0, collateral_offered=(0,),
                  preferred_institution_ids=("Bad Id",), valid_until=NOW - timedelta(seconds=1),
                  docking_mode=d.DockingMode.ENTERPRISE_ACTIVE)
    assert set(check(bad)) == {
        "demand.enterprise_uscc", "demand.amount_fen", "demand.least_acceptable_amount_fen", "demand.term_months",
        "demand.max_rate_bps", "demand.loan_category", "demand.purpose", "demand.collateral_offered",
        "demand.preferred_institution_ids", "demand.valid_until", "demand.product_id",
    }


def test_amount_limits() -> None:
    assert "demand.amount_fen" in check(request(amount_fen=d.MAX_AMOUNT_FEN + 1))
    assert "demand.amount_fen" in check(request(amount_fen=-5))
    assert "demand.least_acceptable_amount_fen" in check(request(amount_fen=100, least_acceptable_amount_fen=101))


def test_keys_are_required_and_bounded() -> None:
    v = Violations()
    d.check_key(v, "request_id", "")
    d.check_key(v, "portal_demand_id", "x" * 129)
    d.check_key(v, "portal_id", "x" * 128)
    assert [x.field for x in v.items] == ["request_id", "portal_demand_id"]


def test_defaults_and_content_hash() -> None:
    r = request()
    stored = d.with_defaults(r, now=NOW)
    assert stored.valid_until == NOW + timedelta(days=90)
    assert stored.docking_mode == d.DockingMode.INTELLIGENT
    assert r.content_hash() == request().content_hash()
    assert r.content_hash() != request(amount_fen=r.amount_fen + 1).content_hash()


def test_institution_defaults_and_violations() -> None:
    i = d.validate_institution(d.Institution(institution_id="icbc-xiamen", name="ICBC Xiamen",
                                             type=d.InstitutionType.BANK))
    assert i.contact_sla_hours == 72
    bad = d.Institution(institution_id="ICBC Xiamen", name="", type=0, contact_sla_hours=721,
                        regions_served=("35", "3502"))
    assert set(violations(d.validate_institution, bad)) == {
        "institution.institution_id", "institution.name", "institution.type", "institution.contact_sla_hours",
        "institution.regions_served",
    }


# -- the life cycle -------------------------------------------------------------------------------------

def test_the_main_path_is_allowed() -> None:
    path = [S.SUBMITTED, S.MATCHING, S.LEADS_ISSUED, S.IN_CONTACT, S.IN_PROCESS, S.FUNDED, S.CLOSED]
    for a, b in zip(path, path[1:], strict=False):
        assert d.can_transition(a, b), (a, b)


@pytest.mark.parametrize(("a", "b"), [
    (S.SUBMITTED, S.NEEDS_INFO), (S.NEEDS_INFO, S.SUBMITTED), (S.MATCHING, S.NO_MATCH),
    (S.IN_PROCESS, S.ALL_DECLINED), (S.ALL_DECLINED, S.MATCHING),
])
def test_the_side_paths_are_allowed(a: d.DemandStatus, b: d.DemandStatus) -> None:
    d.check_transition(a, b)


def test_every_open_state_can_be_withdrawn_or_expire_and_final_states_are_final() -> None:
    assert {S.FUNDED, S.CLOSED, S.WITHDRAWN, S.EXPIRED}.isdisjoint(d.OPEN)
    for s in d.OPEN:
        assert d.can_transition(s, S.WITHDRAWN) and d.can_transition(s, S.EXPIRED)
    for s in d.TERMINAL:
        assert d.TRANSITIONS[s] == frozenset()
    assert set(d.TRANSITIONS) == set(S) - {S.UNSPECIFIED}


@pytest.mark.parametrize(("a", "b"), [
    (S.SUBMITTED, S.LEADS_ISSUED), (S.MATCHING, S.FUNDED), (S.NO_MATCH, S.LEADS_ISSUED),
    (S.CLOSED, S.MATCHING), (S.WITHDRAWN, S.SUBMITTED), (S.FUNDED, S.WITHDRAWN), (S.LEADS_ISSUED, S.MATCHING),
])
def test_illegal_transitions_are_refused(a: d.DemandStatus, b: d.DemandStatus) -> None:
    with pytest.raises(FailedPrecondition, match=f"{a.name} to {b.name}"):
        d.check_transition(a, b)


def test_accept_records_submitted_then_matching() -> None:
    demand = d.accept(demand_id="x", request=request(), channel=d.Channel.API, idempotency_key="r-1", actor="api",
                      enterprise=enterprise(), now=NOW)
    assert demand.status == S.MATCHING
    assert [(h.status, h.actor) for h in demand.history] == [(S.SUBMITTED, "api"), (S.MATCHING, "demand")]
    assert demand.content_hash == request().content_hash()
    assert demand.request.valid_until == NOW + d.DEFAULT_VALIDITY


def test_match_outcome() -> None:
    lead = d.Lead(lead_id="l", demand_id="x", institution_id="icbc-xiamen", product_id="p", product_version=1,
                  origin=1, score=80, rank=1, explanation=(), rules_version="v1", status=1, created_at=NOW,
                  contact_due_at=NOW + timedelta(hours=72))
    issued = d.match_outcome(S.MATCHING, (lead,), "", at=NOW, hints=["ignored"])
    assert issued.status == S.LEADS_ISSUED and issued.no_match_hints == ()
    none = d.match_outcome(S.MATCHING, (), "term too long: extend to 24 months", at=NOW,
                           hints=["a term of 24 months would make 3 products eligible", " "])
    assert none.status == S.NO_MATCH and none.no_match_explanation.startswith("term too long")
    assert none.no_match_hints == ("a term of 24 months would make 3 products eligible",)
    later = d.match_outcome(S.LEADS_ISSUED, (lead,), "", at=NOW, additional=True)
    assert later.no_match_explanation is None and later.no_match_hints is None  # left as they are
    with pytest.raises(FailedPrecondition):
        d.match_outcome(S.WITHDRAWN, (lead,), "", at=NOW)


# -- the domain's enumerations follow the contracts -------------------------------------------------------

@pytest.mark.parametrize(("enum", "pb_enum", "prefix"), [
    (d.LoanCategory, fpb.LoanCategory, "LOAN_CATEGORY_"),
    (d.Collateral, fpb.Collateral, "COLLATERAL_"),
    (d.EnterpriseSize, fpb.EnterpriseSize, "ENTERPRISE_SIZE_"),
    (d.SrdiTier, fpb.SrdiTier, "SRDI_TIER_"),
    (d.InstitutionType, ipb.InstitutionType, "INSTITUTION_TYPE_"),
    (d.Channel, dpb.Channel, "CHANNEL_"),
    (d.DockingMode, dpb.DockingMode, "DOCKING_MODE_"),
    (d.Purpose, dpb.Purpose, "PURPOSE_"),
    (d.DemandStatus, dpb.DemandStatus, "DEMAND_STATUS_"),
])
def test_enumerations_match_the_contracts(enum, pb_enum, prefix) -> None:  # noqa: ANN001
    assert {m.name: m.value for m in enum} == {k.removeprefix(prefix): v for k, v in pb_enum.items()}


def test_key_industries_match_the_contract_by_number() -> None:
    assert [m.value for m in d.KeyIndustry] == list(fpb.KeyIndustry.values())


def test_mapping_round_trips() -> None:
    r = request(valid_until=NOW + timedelta(days=3), preferred_institution_ids=("icbc-xiamen",))
    assert mapping.request_from_pb(mapping.request_to_pb(r)) == r
    e = enterprise(special_zones=("xiamen-software-park",))
    assert mapping.enterprise_from_pb(mapping.enterprise_to_pb(e)) == e
    assert d.Enterprise.from_json(replace(e, registered_at=NOW).to_json()) == replace(e, registered_at=NOW)
