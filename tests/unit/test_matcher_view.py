"""The open demands a worker holds for its partitions (the reverse join's side)."""

from __future__ import annotations

from services.matcher.domain import Demand, OpenDemand
from services.matcher.view import OpenDemandsView


def od(demand_id: str) -> OpenDemand:
    return OpenDemand(Demand(demand_id=demand_id, amount_fen=1, term_months=1, max_rate_bps=0))


def test_holds_only_the_assigned_partitions_and_tracks_leads() -> None:
    view = OpenDemandsView()
    view.put(0, od("early"))  # not assigned yet: not held
    view.load(0, [od("a"), od("b")])
    view.load(1, [od("c")])
    view.put(1, od("d"))
    assert sorted(o.demand.demand_id for o in view) == ["a", "b", "c", "d"]
    view.lead_added("a", "bank-1")
    view.lead_added("a", "bank-2")
    view.lead_dropped("a")
    a = view.get("a")
    assert a is not None and a.active_leads == 1 and a.tried == frozenset({"bank-1", "bank-2"})
    view.drop([0])
    assert sorted(o.demand.demand_id for o in view) == ["c", "d"] and view.parts == {1}
    view.remove("c")
    assert len(view) == 1
    view.lead_added("unknown", "bank-1")  # a demand of another worker: nothing to do
