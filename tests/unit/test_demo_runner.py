"""The demo runner's pure parts: the lead-topic pattern, targets, statistics and the view."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from deploy.demo import dataset as ds
from deploy.demo import runner
from finmesh.demand.v1 import demand_pb2 as dem
from finmesh.matching.v1 import events_pb2 as matching
from meshkit import topics


def test_the_lead_pattern_matches_lead_topics_only() -> None:
    pattern = re.compile(runner.lead_topic_pattern())
    assert pattern.match(topics.lead_topic("icbc-xiamen").name)
    for other in (*(t.name for t in topics.REGISTRY if not t.is_template), "leads.icbc.v1.dlq", "leads..v1"):
        assert not pattern.match(other), other


def test_targets_from_a_mesh_info_or_a_plain_object() -> None:
    console = Console()
    info = SimpleNamespace(services={"demand": 1}, kafka_bootstrap_servers="k:1", console=console,
                           grpc_address=lambda name: {"demand": "h:1", "matcher": "h:2", "roadshow": "h:4"}[name],
                           data_dir=Path("/data"))
    assert runner.Target.of(info) == runner.Target("h:1", "h:2", "k:1", console, "h:4",
                                                   Path("/data/demo-api-keys.json"))
    plain = SimpleNamespace(demand_addr="a:1", matcher_addr="a:2", bootstrap_servers="b:1", console=console)
    assert runner.Target.of(plain) == runner.Target("a:1", "a:2", "b:1", console)


def test_percentiles() -> None:
    assert runner.percentile([], 0.5) is None
    values = [float(v) for v in range(1, 101)]
    assert runner.percentile(values, 0.5) == 50.0
    assert runner.percentile(values, 0.99) == 99.0
    assert runner.percentile([3.0], 0.99) == 3.0


def test_stats_pair_leads_with_the_demands_sent_and_the_view_renders() -> None:
    data = ds.build(enterprises=20)
    stats, names = runner.Stats(), runner.Names(data)
    demand = ds.DemandGenerator(data).next()
    stats.sending(demand)
    stats.submitted["grpc"] += 1
    product = data.products[0]
    returned = dem.DemandRequest()
    returned.CopyFrom(demand)
    returned.valid_until.FromSeconds(2_000_000_000)  # defaults filled in by the demand service
    for rank in (1, 2):
        issued = matching.LeadIssued(demand=returned, enterprise=data.enterprises[0])
        issued.lead.demand_id, issued.lead.institution_id = "d-1", product.institution_id
        issued.lead.product_id, issued.lead.score, issued.lead.rank = product.product_id, 80, rank
        stats.lead(issued, names)
    stranger = matching.LeadIssued(demand=dem.DemandRequest(enterprise_uscc="X", amount_fen=1))
    stranger.lead.demand_id = "d-2"
    stats.lead(stranger, names)
    assert stats.leads == 3 and stats.foreign_leads == 1
    assert stats.demands_with_leads == {"d-1"} and len(stats.latencies) == 1
    assert stats.recent[-1].institution == names.institution(product.institution_id) != product.institution_id
    console = Console(width=160, record=True)
    console.print(runner.render(stats, 5.0, "loaded"))
    text = console.export_text()
    assert "demands with leads" in text and "1 (100%)" in text and data.enterprises[0].city in text


def test_the_demo_keeps_its_institutions_keys_for_the_next_run_readable_by_its_user_only(tmp_path: Path) -> None:
    path = tmp_path / "stack" / "demo-api-keys.json"
    assert runner.read_keys(path) == {}  # a first run
    runner.write_keys(path, {"icbc-xiamen": "fmk_a", "ccb-xiamen": "fmk_b"})
    assert runner.read_keys(path) == {"icbc-xiamen": "fmk_a", "ccb-xiamen": "fmk_b"}
    assert path.stat().st_mode & 0o777 == 0o600
