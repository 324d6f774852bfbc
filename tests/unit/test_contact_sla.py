"""Which SLA a lead is dated and clocked by, and which announced SLAs are refused."""

from __future__ import annotations

import pytest

from finmesh.institution.v1 import events_pb2 as inst_events
from finmesh.institution.v1 import institution_pb2 as inst_pb
from meshkit import codec, institutions
from meshkit.contact_sla import contact_sla


def test_the_most_specific_sla_set_wins() -> None:
    assert contact_sla(12, 48, 24) == (12, "product policy")
    assert contact_sla(0, 48, 24) == (48, "institution policy")
    assert contact_sla(0, 0, 24) == (24, "institution")
    assert contact_sla(0, 0, 0) == (72, "default")


def envelope(institution_id: str, sla_hours: int) -> codec.Envelope:
    return codec.Envelope("e-1", "finmesh.institution.v1.InstitutionChanged", codec.now(), "demand",
                          inst_events.InstitutionChanged(institution=inst_pb.Institution(
                              institution_id=institution_id, contact_sla_hours=sla_hours, version=1)))


@pytest.mark.parametrize(("institution_id", "sla_hours", "reason"), [
    ("", 24, "institution.institution_id"),
    ("bank-a", -1, "contact_sla_hours"),
    ("bank-a", 721, "contact_sla_hours"),
])
def test_an_unusable_institution_is_poison(institution_id: str, sla_hours: int, reason: str) -> None:
    with pytest.raises(codec.PoisonMessage, match=reason):
        institutions.announced(envelope(institution_id, sla_hours))


def test_a_usable_institution_is_taken_as_it_is() -> None:
    assert institutions.announced(envelope("bank-a", 720)).institution.contact_sla_hours == 720
    assert institutions.announced(envelope("bank-a", 0)).institution.contact_sla_hours == 0
