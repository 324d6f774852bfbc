"""Receivables between the pure core and protobuf (the API, the events and the stored body)."""

from __future__ import annotations

from finmesh.receivable.v1 import events_pb2 as rev
from finmesh.receivable.v1 import receivable_pb2 as rpb
from meshkit.pbtime import set_ts, ts_to_dt
from services.demand.receivables import domain as r


def upload_from_pb(request_id: str, x: rpb.Receivable) -> r.Upload:
    return r.Upload(
        request_id=request_id.strip(), supplier_uscc=x.supplier_uscc.strip().upper(),
        debtor_uscc=x.debtor_uscc.strip().upper(), document_kind=int(x.document_kind),
        document_number=x.document_number.strip(), document_date=x.document_date.strip(),
        face_amount_fen=x.face_amount_fen, due_date=x.due_date.strip(), uploaded_by=int(x.uploaded_by),
    )


def to_pb(x: r.Receivable) -> rpb.Receivable:
    u = x.upload
    out = rpb.Receivable(
        receivable_id=x.receivable_id, supplier_uscc=u.supplier_uscc, debtor_uscc=u.debtor_uscc,
        document_kind=u.document_kind, document_number=u.document_number,  # type: ignore[arg-type]
        document_date=u.document_date, face_amount_fen=u.face_amount_fen, due_date=u.due_date,
        uploaded_by=u.uploaded_by, request_id=u.request_id, fingerprint=x.fingerprint,  # type: ignore[arg-type]
        status=int(x.status), confirmed_amount_fen=x.confirmed_amount_fen,  # type: ignore[arg-type]
        duplicate_of=x.duplicate_of, original_payee=u.supplier_uscc, current_payee=x.current_payee,
        reminders_sent=list(x.reminders_sent), dispute_reason=x.dispute_reason, version=x.version,
        near_duplicates=[rpb.NearDuplicate(receivable_id=n.receivable_id, reason=n.reason)
                         for n in x.near_duplicates],
    )
    set_ts(out.created_at, x.created_at)
    for f in x.financings:
        pf = out.financings.add(institution_id=f.institution_id, amount_fen=f.amount_fen, kind=int(f.kind),
                                approved=f.approved, rate_bps=f.rate_bps, decline_reason=f.decline_reason,
                                withdrawn=f.withdrawn)
        set_ts(pf.requested_at, f.requested_at)
        set_ts(pf.decided_at, f.decided_at)
    for h in x.history:
        ph = out.history.add(status=int(h.status), actor=h.actor, reason=h.reason)  # type: ignore[arg-type]
        set_ts(ph.at, h.at)
    return out


def from_pb(x: rpb.Receivable) -> r.Receivable:
    created_at = ts_to_dt(x.created_at)
    assert created_at is not None, "a stored receivable has its creation time"
    return r.Receivable(
        receivable_id=x.receivable_id,
        upload=r.Upload(request_id=x.request_id, supplier_uscc=x.supplier_uscc, debtor_uscc=x.debtor_uscc,
                        document_kind=int(x.document_kind), document_number=x.document_number,
                        document_date=x.document_date, face_amount_fen=x.face_amount_fen, due_date=x.due_date,
                        uploaded_by=int(x.uploaded_by)),
        fingerprint=x.fingerprint, status=r.Status(x.status), created_at=created_at, version=x.version,
        history=tuple(r.StatusChange(r.Status(h.status), ts_to_dt(h.at) or created_at, h.actor, h.reason)
                      for h in x.history),
        confirmed_amount_fen=x.confirmed_amount_fen, duplicate_of=x.duplicate_of,
        near_duplicates=tuple(r.NearDuplicate(n.receivable_id, n.reason) for n in x.near_duplicates),
        reminders_sent=tuple(x.reminders_sent), dispute_reason=x.dispute_reason,
        financings=tuple(r.Financing(f.institution_id, f.amount_fen, r.FinancingKind(f.kind),
                                     requested_at=ts_to_dt(f.requested_at) or created_at,
                                     decided_at=ts_to_dt(f.decided_at), approved=f.approved, rate_bps=f.rate_bps,
                                     decline_reason=f.decline_reason, withdrawn=f.withdrawn)
                         for f in x.financings),
    )


def changed(x: r.Receivable, change: r.Change, days_to_due: int = 0) -> rev.ReceivableChanged:
    return rev.ReceivableChanged(receivable=to_pb(x), change=int(change), days_to_due=days_to_due)  # type: ignore[arg-type]
