"""The reference data of ``reference/``: complete, in step with the contracts, and the demo data set fits it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from deploy.demo import dataset as ds
from finmesh.common.v1 import finance_pb2 as fpb
from meshkit.errors import ValidationFailed
from services.demand import domain as d
from services.demand import mapping, reference

NOW = datetime(2026, 11, 26, tzinfo=UTC)


@pytest.fixture(scope="module")
def ref() -> d.Reference:
    return reference.load()


def test_the_lists_have_the_platform_s_sizes(ref: d.Reference) -> None:
    assert len(ref.key_industries) == 10
    assert len(ref.special_zones) == 24
    assert len(ref.pilot_cities) == 66
    assert {"advanced-manufacturing-cluster", "civil-aircraft", "ships", "software", "5g", "industrial-internet",
            "industrial-green-development"} <= ref.special_zones
    assert ref.pilot_cities["510700"].name == "Mianyang" and ref.pilot_cities["350200"].name_zh == "厦门"
    assert len({c.name for c in ref.pilot_cities.values()}) == 66
    assert all(code[:2] in ref.provinces for code in ref.pilot_cities)


def test_numbered_codes_agree_with_the_contracts(ref: d.Reference) -> None:
    assert ref.key_industries == {v for v in fpb.KeyIndustry.values() if v}
    assert ref.sizes == {v for v in fpb.EnterpriseSize.values() if v}
    assert ref.srdi_tiers == {v for v in fpb.SrdiTier.values() if v}


def test_every_demo_enterprise_and_institution_is_valid(ref: d.Reference) -> None:
    data = ds.build()
    assert {c.region_code for c in ds.CITIES} <= set(ref.pilot_cities)
    assert {z for i in ds.INDUSTRIES for z in i.zones} <= ref.special_zones
    for e in data.enterprises:
        stored = d.validate_enterprise(mapping.enterprise_from_pb(e), now=NOW, ref=ref)
        assert stored.city == e.city  # re-registering the demo data is a no-op
    for i in data.institutions:
        d.validate_institution(mapping.institution_from_pb(i), ref=ref)


def test_reference_checks_name_every_field(ref: d.Reference) -> None:
    e = d.Enterprise(uscc="91350100M000100Y43", name="Xiamen Tools", region_code="350201", city="Xiamen",
                     key_industry=3, size=2, srdi_tier=3, founded_year=2010, special_zones=("ships", "moon-base"))
    with pytest.raises(ValidationFailed) as info:
        d.validate_enterprise(e, now=NOW, ref=ref)
    assert {v.field for v in info.value.violations} == {"enterprise.region_code", "enterprise.special_zones"}
    with pytest.raises(ValidationFailed) as info:
        d.validate_enterprise(replace(e, region_code="510700", special_zones=()), now=NOW, ref=ref)
    assert {v.field for v in info.value.violations} == {"enterprise.city"}  # 510700 is Mianyang


def test_the_city_is_named_from_the_region(ref: d.Reference) -> None:
    e = d.Enterprise(uscc="91350100M000100Y43", name="Xiamen Tools", region_code="350200", key_industry=3, size=2,
                     srdi_tier=3, founded_year=2010)
    assert d.validate_enterprise(e, now=NOW, ref=ref).city == "Xiamen"
    assert d.validate_enterprise(replace(e, city="厦门"), now=NOW, ref=ref).city == "Xiamen"
    assert ref.city_named("mianyang").region_code == "510700"  # type: ignore[union-attr]


def test_institution_regions_must_be_known_provinces(ref: d.Reference) -> None:
    bad = d.Institution(institution_id="bank-x", name="Bank X", type=1, regions_served=("99", "350200"))
    with pytest.raises(ValidationFailed) as info:
        d.validate_institution(bad, ref=ref)
    assert [v.field for v in info.value.violations] == ["institution.regions_served"]
