"""Protobuf ⇄ domain, in one place. Enumerations share their numbering, so they map as ints."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from finmesh.common.v1 import finance_pb2
from finmesh.enterprise.v1 import enterprise_pb2 as epb
from finmesh.roadshow.v1 import events_pb2 as events
from finmesh.roadshow.v1 import roadshow_pb2 as pb
from meshkit.pbtime import set_ts, ts_to_dt
from services.roadshow import domain as r
from services.roadshow import store

NOTICE_INVITED = events.NOTICE_KIND_INVITED
NOTICE_RECEIVED = events.NOTICE_KIND_APPLICATION_RECEIVED
NOTICE_REFUSED = events.NOTICE_KIND_APPLICATION_REFUSED
NOTICE_SELECTED = events.NOTICE_KIND_SELECTED
NOTICE_NOT_SELECTED = events.NOTICE_KIND_NOT_SELECTED
NOTICE_INVESTOR_REGISTERED = events.NOTICE_KIND_INVESTOR_REGISTERED
NOTICE_INTENT = events.NOTICE_KIND_INTENT_RECORDED

FIGURES = tuple(f.name for f in pb.RoadshowFigures.DESCRIPTOR.fields)


# -- roadshows ------------------------------------------------------------------------------------------

UNSET = datetime(1970, 1, 1, tzinfo=UTC)  # stands for a timestamp the request left out


def roadshow_from_pb(m: pb.Roadshow) -> r.Roadshow:
    """A roadshow as requested; missing times are :data:`UNSET` (the caller defaults or refuses them)."""
    return r.Roadshow(
        roadshow_id=m.roadshow_id, month=m.month,
        theme=r.Theme(r.ThemeKind(m.theme_kind) if m.theme_kind in r.ThemeKind._value2member_map_
                      else r.ThemeKind.UNSPECIFIED, m.theme, int(m.theme_industry), m.theme_zone),
        city=m.city, held_at=ts_to_dt(m.held_at) or UNSET,
        applications_open_at=ts_to_dt(m.applications_open_at) or UNSET,
        applications_close_at=ts_to_dt(m.applications_close_at) or UNSET, capacity=m.capacity,
    )


def roadshow_to_pb(x: r.Roadshow) -> pb.Roadshow:
    m = pb.Roadshow(roadshow_id=x.roadshow_id, month=x.month, theme=x.theme.title, theme_kind=int(x.theme.kind),
                    theme_industry=int(x.theme.industry), theme_zone=x.theme.zone, city=x.city, capacity=x.capacity,
                    status=int(x.status), automatic=x.automatic, presenters=x.presenters, version=x.version)
    set_ts(m.held_at, x.held_at)
    set_ts(m.applications_open_at, x.applications_open_at)
    set_ts(m.applications_close_at, x.applications_close_at)
    set_ts(m.created_at, x.created_at)
    return m


# -- applications, investors, intents --------------------------------------------------------------------


def application_to_pb(a: store.Application) -> pb.Application:
    m = pb.Application(
        roadshow_id=a.roadshow_id, enterprise_uscc=a.uscc, status=int(a.status), amount_sought_fen=a.amount_sought_fen,
        purpose=a.purpose, pitch=a.pitch, refusal_reasons=list(a.refusal_reasons), score=a.score, rank=a.rank,
        ranking=[pb.RankingCriterion(criterion=c.criterion, value=c.value, points=c.points) for c in a.ranking],
        selection_reason=a.selection_reason, override_by=a.override_by, invited=a.invited,
    )
    set_ts(m.applied_at, a.applied_at)
    set_ts(m.updated_at, a.updated_at)
    return m


def investor_to_pb(x: asyncpg.Record) -> pb.Investor:
    m = pb.Investor(roadshow_id=x["roadshow_id"], institution_id=x["institution_id"], name=x["name"],
                    institution_type=x["institution_type"])
    set_ts(m.registered_at, x["registered_at"])
    return m


def intent_request_from_pb(m: pb.RecordIntentRequest) -> r.IntentRequest:
    return r.IntentRequest(roadshow_id=m.roadshow_id, institution_id=m.institution_id,
                           enterprise_uscc=m.enterprise_uscc, intended_amount_fen=m.intended_amount_fen,
                           instrument=int(m.instrument), note=m.note, term_months=m.term_months)


def intent_to_pb(i: store.Intent) -> pb.Intent:
    m = pb.Intent(intent_id=i.intent_id, roadshow_id=i.roadshow_id, institution_id=i.institution_id,
                  enterprise_uscc=i.uscc, intended_amount_fen=i.intended_amount_fen, instrument=i.instrument,
                  note=i.note, term_months=i.term_months, demand_id=i.demand_id, lead_id=i.lead_id,
                  lead_status=i.lead_status, approved_amount_fen=i.approved_amount_fen,
                  granted_amount_fen=i.granted_amount_fen)
    set_ts(m.recorded_at, i.recorded_at)
    return m


def intent_recorded(i: store.Intent) -> events.IntentRecorded:
    m = events.IntentRecorded(intent_id=i.intent_id, roadshow_id=i.roadshow_id, institution_id=i.institution_id,
                              enterprise_uscc=i.uscc, intended_amount_fen=i.intended_amount_fen,
                              instrument=i.instrument, note=i.note, term_months=i.term_months, purpose=i.purpose)
    set_ts(m.recorded_at, i.recorded_at)
    return m


def notice(rs: r.Roadshow, notice_id: str, kind: int, recipient_id: str, *, institution: bool, reason: str,
           at: datetime) -> events.RoadshowNotice:
    m = events.RoadshowNotice(
        notice_id=notice_id, roadshow_id=rs.roadshow_id, kind=kind,
        recipient_kind=events.RECIPIENT_KIND_INSTITUTION if institution else events.RECIPIENT_KIND_ENTERPRISE,
        recipient_id=recipient_id, roadshow_title=rs.title, city=rs.city, reason=reason,
    )
    set_ts(m.held_at, rs.held_at)
    set_ts(m.issued_at, at)
    return m


def enterprise_view(m: epb.Enterprise) -> r.EnterpriseView:
    return r.EnterpriseView(uscc=m.uscc, name=m.name, key_industry=int(m.key_industry), srdi_tier=int(m.srdi_tier),
                            has_borrowed=m.has_borrowed, special_zones=tuple(m.special_zones))


def figures_to_pb(f: dict[str, int]) -> pb.RoadshowFigures:
    return pb.RoadshowFigures(**{k: f.get(k, 0) for k in FIGURES})


def report_key(group_by: int, key: str) -> str:
    """A report row's key: the theme's key industry by its enum name, anything else as stored."""
    if group_by == pb.REPORT_GROUPING_INDUSTRY:
        return finance_pb2.KeyIndustry.Name(int(key)) if key.isdigit() else key
    return key
