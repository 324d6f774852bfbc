"""The receivable registry through ReceivableService, on the real broker and database: upload,
the debtor's irrevocable confirmation, duplicates blocked (also when two arrive at once) and
near-duplicates flagged, financing once with the payee changed to the financier, settlement by the
payee, the payment prompts and overdue receivables of the maturity pass (two replicas at once), and
every change on ``demand.receivable-changed.v1`` in order."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from demand_support import new_uscc, read_topic, registered, rpc_error

from finmesh.institution.v1 import institution_pb2 as inst
from finmesh.receivable.v1 import events_pb2 as rev
from finmesh.receivable.v1 import receivable_pb2 as rpb
from finmesh.receivable.v1 import receivable_pb2_grpc as rpb_grpc
from meshkit import codec, topics
from meshkit.grpcserver import field_violations
from meshkit.lifecycle import Runtime
from services.demand.app import SCHEMA
from services.demand.receivables.service import Receivables

if TYPE_CHECKING:
    from .conftest import Stubs

pytestmark = pytest.mark.integration
S = rpb


@pytest.fixture(scope="module")
async def receivables(demand_rt: Runtime):  # noqa: ANN201
    async with grpc.aio.insecure_channel(f"127.0.0.1:{demand_rt.grpc_port}") as channel:
        yield rpb_grpc.ReceivableServiceStub(channel)


async def institution(stubs: Stubs) -> tuple[str, tuple[tuple[str, str]]]:
    """A new bank: its id and the metadata carrying its API key."""
    institution_id = f"bank-{uuid.uuid4().hex[:8]}"
    reply = await stubs.institutions.RegisterInstitution(inst.RegisterInstitutionRequest(institution=inst.Institution(
        institution_id=institution_id, name="Bank of Xiamen", type=inst.INSTITUTION_TYPE_BANK, regions_served=["35"])))
    return institution_id, (("x-api-key", reply.api_key),)


def invoice(supplier: str, debtor: str, **kw: object) -> rpb.Receivable:
    today = codec.now().date()
    base = dict(supplier_uscc=supplier, debtor_uscc=debtor, document_kind=S.DOCUMENT_KIND_INVOICE,
                document_number="INV-2026/0042", document_date=(today - timedelta(days=8)).isoformat(),
                face_amount_fen=80_000_000, due_date=(today + timedelta(days=90)).isoformat(),
                uploaded_by=S.PARTY_SUPPLIER)
    base.update(kw)
    return rpb.Receivable(**base)


async def changes_of(bootstrap: str, receivable_id: str, want: int) -> list[rev.ReceivableChanged]:
    records = await read_topic(bootstrap, topics.RECEIVABLES_CHANGED.name, lambda found: len(found) >= want,
                               lambda rec: rec.key == receivable_id.encode(), linger=0.5)
    return [rev.ReceivableChanged.FromString(rec.value) for rec in records]


async def test_a_receivable_is_confirmed_financed_once_paid_to_its_financier_and_announced_in_order(
    stubs: Stubs, receivables: rpb_grpc.ReceivableServiceStub, bootstrap: str
) -> None:
    supplier, debtor = await registered(stubs), await registered(stubs, name="Core Motors Co.")
    (bank_a, key_a), (bank_b, key_b) = await institution(stubs), await institution(stubs)
    up = await receivables.UploadReceivable(S.UploadReceivableRequest(request_id="inv-42",
                                                                      receivable=invoice(supplier, debtor)))
    x = up.receivable
    assert up.created and x.status == S.RECEIVABLE_STATUS_PENDING_CONFIRMATION and x.current_payee == supplier
    again = await receivables.UploadReceivable(S.UploadReceivableRequest(request_id="inv-42",
                                                                         receivable=invoice(supplier, debtor)))
    assert not again.created and again.receivable == x
    err = await rpc_error(receivables.UploadReceivable(S.UploadReceivableRequest(
        request_id="inv-42", receivable=invoice(supplier, debtor, face_amount_fen=1))))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS

    err = await rpc_error(receivables.RequestFinancing(S.RequestFinancingRequest(
        receivable_id=x.receivable_id, supplier_uscc=supplier, institution_id=bank_a, amount_fen=1,
        kind=S.FINANCING_KIND_PLEDGE)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # not confirmed yet
    err = await rpc_error(receivables.ConfirmReceivable(S.ConfirmReceivableRequest(
        receivable_id=x.receivable_id, debtor_uscc=supplier)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    confirmed = await receivables.ConfirmReceivable(S.ConfirmReceivableRequest(
        receivable_id=x.receivable_id, debtor_uscc=debtor, confirmed_amount_fen=75_000_000))
    assert confirmed.changed and confirmed.receivable.confirmed_amount_fen == 75_000_000
    err = await rpc_error(receivables.ConfirmReceivable(S.ConfirmReceivableRequest(
        receivable_id=x.receivable_id, debtor_uscc=debtor, confirmed_amount_fen=80_000_000)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "irrevocable" in err.details()

    # The supplier applies to bank B, then withdraws (only it may) and applies to bank A instead.
    await receivables.RequestFinancing(S.RequestFinancingRequest(
        receivable_id=x.receivable_id, supplier_uscc=supplier, institution_id=bank_b, amount_fen=70_000_000,
        kind=S.FINANCING_KIND_PLEDGE))
    err = await rpc_error(receivables.WithdrawFinancing(S.WithdrawFinancingRequest(
        receivable_id=x.receivable_id, supplier_uscc=debtor)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    withdrawn = (await receivables.WithdrawFinancing(S.WithdrawFinancingRequest(
        receivable_id=x.receivable_id, supplier_uscc=supplier, reason="a better rate elsewhere"))).receivable
    assert withdrawn.status == S.RECEIVABLE_STATUS_CONFIRMED and withdrawn.financings[-1].withdrawn
    err = await rpc_error(receivables.DecideFinancing(S.DecideFinancingRequest(
        receivable_id=x.receivable_id, approve=True, rate_bps=350), metadata=key_b))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # nothing left for bank B to decide
    await receivables.RequestFinancing(S.RequestFinancingRequest(
        receivable_id=x.receivable_id, supplier_uscc=supplier, institution_id=bank_a, amount_fen=70_000_000,
        kind=S.FINANCING_KIND_ASSIGNMENT))
    err = await rpc_error(receivables.RequestFinancing(S.RequestFinancingRequest(
        receivable_id=x.receivable_id, supplier_uscc=supplier, institution_id=bank_b, amount_fen=70_000_000,
        kind=S.FINANCING_KIND_PLEDGE)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and bank_a in err.details()
    err = await rpc_error(receivables.DecideFinancing(S.DecideFinancingRequest(
        receivable_id=x.receivable_id, approve=True, rate_bps=350), metadata=key_b))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(receivables.DecideFinancing(S.DecideFinancingRequest(
        receivable_id=x.receivable_id, approve=True, rate_bps=350)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED  # no key
    financed = (await receivables.DecideFinancing(S.DecideFinancingRequest(
        receivable_id=x.receivable_id, approve=True, rate_bps=350), metadata=key_a)).receivable
    assert financed.status == S.RECEIVABLE_STATUS_FINANCED
    assert (financed.original_payee, financed.current_payee) == (supplier, bank_a)
    assert [(f.institution_id, f.amount_fen, f.approved, f.rate_bps, f.withdrawn) for f in financed.financings] == [
        (bank_b, 70_000_000, False, 0, True), (bank_a, 70_000_000, True, 350, False)]

    err = await rpc_error(receivables.SettleReceivable(S.SettleReceivableRequest(
        receivable_id=x.receivable_id, supplier_uscc=supplier)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED  # the financier is paid now
    err = await rpc_error(receivables.SettleReceivable(S.SettleReceivableRequest(
        receivable_id=x.receivable_id, supplier_uscc=bank_a)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED  # naming the financier is not being it: its key is
    settled = (await receivables.SettleReceivable(S.SettleReceivableRequest(receivable_id=x.receivable_id),
                                                  metadata=key_a)).receivable
    assert settled.status == S.RECEIVABLE_STATUS_SETTLED
    assert [h.status for h in settled.history] == [
        S.RECEIVABLE_STATUS_PENDING_CONFIRMATION, S.RECEIVABLE_STATUS_CONFIRMED, S.RECEIVABLE_STATUS_FINANCING,
        S.RECEIVABLE_STATUS_CONFIRMED, S.RECEIVABLE_STATUS_FINANCING, S.RECEIVABLE_STATUS_FINANCED,
        S.RECEIVABLE_STATUS_SETTLED]
    listed = await receivables.ListReceivables(S.ListReceivablesRequest(financier_id=bank_a))
    assert [r.receivable_id for r in listed.receivables] == [x.receivable_id]

    events = await changes_of(bootstrap, x.receivable_id, 7)
    assert [(e.change, e.receivable.version) for e in events] == [
        (rev.CHANGE_KIND_UPLOADED, 1), (rev.CHANGE_KIND_CONFIRMED, 2), (rev.CHANGE_KIND_FINANCING_REQUESTED, 3),
        (rev.CHANGE_KIND_FINANCING_WITHDRAWN, 4), (rev.CHANGE_KIND_FINANCING_REQUESTED, 5),
        (rev.CHANGE_KIND_FINANCED, 6), (rev.CHANGE_KIND_SETTLED, 7)]
    assert events[5].receivable.current_payee == bank_a


async def test_the_same_receivable_is_blocked_however_its_number_is_typed_and_a_near_one_is_flagged(
    stubs: Stubs, receivables: rpb_grpc.ReceivableServiceStub, bootstrap: str
) -> None:
    supplier, debtor = await registered(stubs), await registered(stubs)
    bank, _ = await institution(stubs)
    first = (await receivables.UploadReceivable(S.UploadReceivableRequest(
        request_id="a", receivable=invoice(supplier, debtor, uploaded_by=S.PARTY_DEBTOR)))).receivable
    assert first.status == S.RECEIVABLE_STATUS_CONFIRMED  # the debtor uploaded it
    copy = (await receivables.UploadReceivable(S.UploadReceivableRequest(
        request_id="b", receivable=invoice(supplier, debtor, document_number=" inv 2026 0042 ")))).receivable
    assert (copy.status, copy.duplicate_of, copy.fingerprint) == (
        S.RECEIVABLE_STATUS_BLOCKED_DUPLICATE, first.receivable_id, first.fingerprint)
    err = await rpc_error(receivables.RequestFinancing(S.RequestFinancingRequest(
        receivable_id=copy.receivable_id, supplier_uscc=supplier, institution_id=bank, amount_fen=1,
        kind=S.FINANCING_KIND_PLEDGE)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    near = (await receivables.UploadReceivable(S.UploadReceivableRequest(
        request_id="c", receivable=invoice(supplier, debtor, face_amount_fen=79_000_000)))).receivable
    assert near.status == S.RECEIVABLE_STATUS_PENDING_CONFIRMATION
    assert [n.receivable_id for n in near.near_duplicates] == [first.receivable_id]
    [blocked] = await changes_of(bootstrap, copy.receivable_id, 1)
    assert blocked.change == rev.CHANGE_KIND_BLOCKED_DUPLICATE

    # Two uploads of one invoice at the same moment: one is live, the other blocked.
    other = "INV-RACE-7"
    replies = await asyncio.gather(*(receivables.UploadReceivable(S.UploadReceivableRequest(
        request_id=f"race-{n}", receivable=invoice(supplier, debtor, document_number=other))) for n in range(4)))
    statuses = sorted(r.receivable.status for r in replies)
    assert statuses == [S.RECEIVABLE_STATUS_PENDING_CONFIRMATION] + [S.RECEIVABLE_STATUS_BLOCKED_DUPLICATE] * 3
    # The same request four times at once: one receivable, created once.
    same = await asyncio.gather(*(receivables.UploadReceivable(S.UploadReceivableRequest(
        request_id="retried", receivable=invoice(supplier, debtor, document_number="INV-RETRY-1"))) for _ in range(4)))
    assert len({r.receivable.receivable_id for r in same}) == 1 and sorted(r.created for r in same) == [
        False, False, False, True]


async def test_bad_uploads_name_every_wrong_field_and_unregistered_parties_are_refused(
    stubs: Stubs, receivables: rpb_grpc.ReceivableServiceStub
) -> None:
    supplier = await registered(stubs)
    err = await rpc_error(receivables.UploadReceivable(S.UploadReceivableRequest(request_id="x", receivable=invoice(
        supplier, supplier, document_number="", face_amount_fen=-5, due_date="2026-02-30"))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err)) == {"receivable.debtor_uscc", "receivable.document_number",
                                          "receivable.face_amount_fen", "receivable.due_date"}
    err = await rpc_error(receivables.UploadReceivable(S.UploadReceivableRequest(
        request_id="y", receivable=invoice(supplier, new_uscc()))))  # valid, never registered
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(err) == {"receivable.debtor_uscc": "no enterprise is registered with this code"}
    err = await rpc_error(receivables.GetReceivable(S.GetReceivableRequest(receivable_id="no-such")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_the_maturity_pass_prompts_payment_then_marks_a_financed_receivable_overdue_once(
    stubs: Stubs, receivables: rpb_grpc.ReceivableServiceStub, demand_rt: Runtime, bootstrap: str
) -> None:
    supplier, debtor = await registered(stubs), await registered(stubs)
    bank, key = await institution(stubs)
    x = (await receivables.UploadReceivable(S.UploadReceivableRequest(request_id="m", receivable=invoice(
        supplier, debtor, document_number=f"M-{uuid.uuid4().hex[:6]}", uploaded_by=S.PARTY_DEBTOR)))).receivable
    await receivables.RequestFinancing(S.RequestFinancingRequest(
        receivable_id=x.receivable_id, supplier_uscc=supplier, institution_id=bank, amount_fen=60_000_000,
        kind=S.FINANCING_KIND_PLEDGE))
    await receivables.DecideFinancing(S.DecideFinancingRequest(receivable_id=x.receivable_id, approve=True,
                                                               rate_bps=300), metadata=key)
    now = codec.now()
    due = now + timedelta(days=90)
    for day in (due - timedelta(days=7), due - timedelta(days=1), due, due + timedelta(days=1)):
        replicas = [Receivables(demand_rt.pool, demand_rt.metrics, schema=SCHEMA, clock=lambda at=day: at)
                    for _ in range(2)]
        await asyncio.gather(*(replica.mature_due(limit=1) for replica in replicas))
        while any([await replica.mature_due() for replica in replicas]):
            pass
    got = (await receivables.GetReceivable(S.GetReceivableRequest(receivable_id=x.receivable_id))).receivable
    assert got.status == S.RECEIVABLE_STATUS_OVERDUE and list(got.reminders_sent) == [7, 1, 0]
    assert [h.status for h in got.history].count(S.RECEIVABLE_STATUS_OVERDUE) == 1
    events = await changes_of(bootstrap, x.receivable_id, 7)
    assert [(e.change, e.days_to_due) for e in events[3:]] == [
        (rev.CHANGE_KIND_PAYMENT_DUE, 7), (rev.CHANGE_KIND_PAYMENT_DUE, 1), (rev.CHANGE_KIND_PAYMENT_DUE, 0),
        (rev.CHANGE_KIND_OVERDUE, -1)]
    assert all(e.receivable.current_payee == bank for e in events[3:])  # the debtor is told whom to pay
    paid = (await receivables.SettleReceivable(S.SettleReceivableRequest(receivable_id=x.receivable_id),
                                               metadata=key)).receivable
    assert paid.status == S.RECEIVABLE_STATUS_SETTLED
