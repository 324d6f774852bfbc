"""The receivable registry's pure core: validation naming every wrong field, fingerprints that see
through how a document number is typed, near-duplicates, the life cycle (confirmation irrevocable,
financing once, the payee change) and the payment prompts at maturity."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import FailedPrecondition, PermissionDenied, ValidationFailed
from services.demand.domain import uscc_check_char, uscc_problem
from services.demand.receivables import domain as r

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
TODAY = NOW.date()


def uscc(n: int) -> str:
    first17 = f"91350200MA{n:07d}"
    return first17 + uscc_check_char(first17)


SUPPLIER, DEBTOR = uscc(1), uscc(2)


def upload(**changes: object) -> r.Upload:
    fields: dict[str, object] = dict(
        request_id="up-1", supplier_uscc=SUPPLIER, debtor_uscc=DEBTOR, document_kind=r.DocumentKind.INVOICE,
        document_number="INV-2026/0042", document_date="2026-11-20", face_amount_fen=50_000_000,
        due_date="2027-02-18", uploaded_by=r.Party.SUPPLIER)
    fields.update(changes)
    return r.Upload(**fields)  # type: ignore[arg-type]


def confirmed(**changes: object) -> r.Receivable:
    x = r.register(upload(**changes), receivable_id="rcv-1", now=NOW)
    return r.confirm(x, debtor_uscc=DEBTOR, amount_fen=0, at=NOW)[0]


def financed(institution: str = "bank-a") -> r.Receivable:
    x = r.request_financing(confirmed(), supplier_uscc=SUPPLIER, institution_id=institution, amount_fen=40_000_000,
                            kind=r.FinancingKind.PLEDGE, today=TODAY, at=NOW)
    return r.decide_financing(x, institution_id=institution, approve=True, rate_bps=380, decline_reason="",
                              today=TODAY, at=NOW)


def test_a_valid_upload_passes() -> None:
    r.validate(upload(), today=TODAY, uscc_problem=uscc_problem)


def test_every_wrong_field_is_named_at_once() -> None:
    bad = upload(request_id="", supplier_uscc="91350200MA0000001X", debtor_uscc="91350200MA0000001X",
                 document_kind=9, document_number=" -/ ", face_amount_fen=0, document_date="2026-13-01",
                 due_date="tomorrow", uploaded_by=0)
    with pytest.raises(ValidationFailed) as err:
        r.validate(bad, today=TODAY, uscc_problem=uscc_problem)
    assert {v.field for v in err.value.violations} == {
        "request_id", "receivable.supplier_uscc", "receivable.debtor_uscc", "receivable.document_kind",
        "receivable.document_number", "receivable.face_amount_fen", "receivable.document_date",
        "receivable.due_date", "receivable.uploaded_by"}


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"document_date": "2026-12-01"}, "receivable.document_date", "future"),
    ({"document_date": "2026-10-01", "due_date": "2026-11-01"}, "receivable.due_date", "past"),
    ({"document_date": "2026-11-28", "due_date": "2026-11-28"}, "receivable.due_date", "after the document date"),
    ({"due_date": "2030-01-01"}, "receivable.due_date", "at most"),
    ({"face_amount_fen": r.MAX_AMOUNT_FEN + 1}, "receivable.face_amount_fen", "at most"),
])
def test_dates_and_amounts_out_of_range_are_refused(changes: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        r.validate(upload(**changes), today=TODAY, uscc_problem=uscc_problem)
    assert [(v.field, words in v.description) for v in err.value.violations] == [(field, True)]


@given(st.lists(st.sampled_from([" ", "-", "/", "_", "."]), max_size=4), st.booleans())
def test_the_fingerprint_does_not_depend_on_how_the_number_is_typed(separators: list[str], lower: bool) -> None:
    number = "INV" + "".join(separators) + "2026" + "".join(reversed(separators)) + "0042"
    assert r.fingerprint(upload(document_number=number.lower() if lower else number)) == r.fingerprint(upload())


@pytest.mark.parametrize("changes", [{"document_number": "INV-2026/0043"}, {"face_amount_fen": 50_000_001},
                                     {"document_date": "2026-11-21"}, {"debtor_uscc": uscc(3)},
                                     {"supplier_uscc": uscc(4)}])
def test_the_fingerprint_changes_with_what_makes_a_receivable(changes: dict[str, object]) -> None:
    assert r.fingerprint(upload(**changes)) != r.fingerprint(upload())


def test_near_duplicates_are_flagged_the_same_one_and_the_unrelated_are_not() -> None:
    first = confirmed()
    other_amount = r.register(upload(request_id="up-2", face_amount_fen=49_000_000), receivable_id="rcv-2", now=NOW)
    other_number = r.register(upload(request_id="up-3", document_number="INV-2026/0099"), receivable_id="rcv-3",
                              now=NOW)
    unrelated = r.register(upload(request_id="up-4", document_number="X1", face_amount_fen=7), receivable_id="rcv-4",
                           now=NOW)
    disputed = r.dispute(r.register(upload(request_id="up-5", document_date="2026-11-19"), receivable_id="rcv-5",
                                    now=NOW), debtor_uscc=DEBTOR, reason="never delivered", at=NOW)
    found = r.near_duplicates(upload(request_id="new", document_date="2026-11-21"),
                              [first, other_amount, other_number, unrelated, disputed])
    assert [(n.receivable_id, "number" in n.reason) for n in found] == [("rcv-1", True), ("rcv-2", True)]
    same_amount_and_date = r.near_duplicates(upload(request_id="new", document_number="INV-9"), [first])
    assert [n.reason for n in same_amount_and_date] == ["the same amount and document date under another number"]
    assert r.near_duplicates(upload(), [first]) == ()  # the same receivable: a duplicate, not a near one


def test_who_uploads_decides_whether_the_debtor_must_confirm() -> None:
    by_supplier = r.register(upload(), receivable_id="a", now=NOW)
    by_debtor = r.register(upload(uploaded_by=r.Party.DEBTOR), receivable_id="b", now=NOW)
    blocked = r.register(upload(), receivable_id="c", now=NOW, duplicate_of="a")
    assert (by_supplier.status, by_supplier.confirmed_amount_fen) == (r.Status.PENDING_CONFIRMATION, 0)
    assert (by_debtor.status, by_debtor.confirmed_amount_fen) == (r.Status.CONFIRMED, 50_000_000)
    assert by_debtor.history[0].actor == f"enterprise:{DEBTOR}"
    assert (blocked.status, blocked.duplicate_of) == (r.Status.BLOCKED_DUPLICATE, "a")
    with pytest.raises(FailedPrecondition):
        r.request_financing(blocked, supplier_uscc=SUPPLIER, institution_id="bank-a", amount_fen=1,
                            kind=r.FinancingKind.PLEDGE, today=TODAY, at=NOW)


def test_only_the_debtor_confirms_and_a_confirmation_is_irrevocable() -> None:
    x = r.register(upload(), receivable_id="a", now=NOW)
    with pytest.raises(PermissionDenied):
        r.confirm(x, debtor_uscc=SUPPLIER, amount_fen=0, at=NOW)
    with pytest.raises(ValidationFailed):
        r.confirm(x, debtor_uscc=DEBTOR, amount_fen=50_000_001, at=NOW)
    done, changed = r.confirm(x, debtor_uscc=DEBTOR, amount_fen=45_000_000, at=NOW)
    assert changed and (done.status, done.confirmed_amount_fen, done.version) == (r.Status.CONFIRMED, 45_000_000, 2)
    again, changed = r.confirm(done, debtor_uscc=DEBTOR, amount_fen=45_000_000, at=NOW)
    assert not changed and again == done
    with pytest.raises(FailedPrecondition, match="irrevocable"):
        r.confirm(done, debtor_uscc=DEBTOR, amount_fen=50_000_000, at=NOW)
    with pytest.raises(FailedPrecondition):
        r.dispute(done, debtor_uscc=DEBTOR, reason="changed my mind", at=NOW)


def test_financing_changes_the_payee_and_happens_once() -> None:
    x = financed("bank-a")
    assert (x.status, x.current_payee, x.financier) == (r.Status.FINANCED, "bank-a", "bank-a")
    assert x.financings[-1].rate_bps == 380 and x.financings[-1].approved
    with pytest.raises(FailedPrecondition, match="financed once"):
        r.request_financing(x, supplier_uscc=SUPPLIER, institution_id="bank-b", amount_fen=1,
                            kind=r.FinancingKind.PLEDGE, today=TODAY, at=NOW)
    with pytest.raises(PermissionDenied):  # paid to the financier now, not to the supplier
        r.settle(x, supplier_uscc=SUPPLIER, at=NOW)
    with pytest.raises(PermissionDenied):  # a supplier's report naming the financier is not the financier's
        r.settle(x, supplier_uscc="bank-a", at=NOW)
    with pytest.raises(PermissionDenied):
        r.settle(x, institution_id="bank-b", at=NOW)
    settled = r.settle(x, institution_id="bank-a", at=NOW)
    assert settled.status == r.Status.SETTLED and settled.history[-1].actor == "institution:bank-a"


def test_one_application_at_a_time_decided_only_by_its_financier() -> None:
    x = r.request_financing(confirmed(), supplier_uscc=SUPPLIER, institution_id="bank-a", amount_fen=50_000_000,
                            kind=r.FinancingKind.ASSIGNMENT, today=TODAY, at=NOW)
    with pytest.raises(FailedPrecondition, match="one application at a time"):
        r.request_financing(x, supplier_uscc=SUPPLIER, institution_id="bank-b", amount_fen=1,
                            kind=r.FinancingKind.PLEDGE, today=TODAY, at=NOW)
    with pytest.raises(PermissionDenied):
        r.decide_financing(x, institution_id="bank-b", approve=True, rate_bps=300, decline_reason="", today=TODAY,
                           at=NOW)
    with pytest.raises(ValidationFailed):
        r.decide_financing(x, institution_id="bank-a", approve=False, rate_bps=0, decline_reason=" ", today=TODAY,
                           at=NOW)
    declined = r.decide_financing(x, institution_id="bank-a", approve=False, rate_bps=0,
                                  decline_reason="debtor rating too low", today=TODAY, at=NOW)
    assert (declined.status, declined.current_payee, declined.financier) == (r.Status.CONFIRMED, SUPPLIER, "")
    elsewhere = r.request_financing(declined, supplier_uscc=SUPPLIER, institution_id="bank-b", amount_fen=1,
                                    kind=r.FinancingKind.PLEDGE, today=TODAY, at=NOW)
    assert elsewhere.pending is not None and elsewhere.pending.institution_id == "bank-b"


def test_the_supplier_withdraws_a_pending_application_and_may_apply_elsewhere() -> None:
    x = r.request_financing(confirmed(), supplier_uscc=SUPPLIER, institution_id="bank-a", amount_fen=1,
                            kind=r.FinancingKind.PLEDGE, today=TODAY, at=NOW)
    with pytest.raises(PermissionDenied):
        r.withdraw_financing(x, supplier_uscc=DEBTOR, reason="", at=NOW)
    with pytest.raises(ValidationFailed):
        r.withdraw_financing(x, supplier_uscc=SUPPLIER, reason="x" * 501, at=NOW)
    back = r.withdraw_financing(x, supplier_uscc=SUPPLIER, reason="a better rate elsewhere", at=NOW)
    assert (back.status, back.pending, back.financier, back.current_payee) == (r.Status.CONFIRMED, None, "", SUPPLIER)
    assert back.financings[-1].withdrawn and not back.financings[-1].approved
    assert back.financings[-1].decline_reason == "withdrawn by the supplier: a better rate elsewhere"
    with pytest.raises(FailedPrecondition, match="no application is pending"):
        r.withdraw_financing(back, supplier_uscc=SUPPLIER, reason="", at=NOW)
    with pytest.raises(FailedPrecondition):  # the financier can no longer decide it
        r.decide_financing(back, institution_id="bank-a", approve=True, rate_bps=300, decline_reason="", today=TODAY,
                           at=NOW)
    elsewhere = r.request_financing(back, supplier_uscc=SUPPLIER, institution_id="bank-b", amount_fen=1,
                                    kind=r.FinancingKind.PLEDGE, today=TODAY, at=NOW)
    assert elsewhere.pending is not None and elsewhere.pending.institution_id == "bank-b"
    with pytest.raises(FailedPrecondition):  # financed: nothing to withdraw
        r.withdraw_financing(financed("bank-a"), supplier_uscc=SUPPLIER, reason="", at=NOW)


def test_financing_is_refused_to_anyone_but_the_supplier_above_the_confirmed_amount_or_at_the_due_date() -> None:
    x = confirmed()
    apply = dict(institution_id="bank-a", kind=r.FinancingKind.PLEDGE, at=NOW)
    with pytest.raises(PermissionDenied):
        r.request_financing(x, supplier_uscc=DEBTOR, amount_fen=1, today=TODAY, **apply)  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed):
        r.request_financing(x, supplier_uscc=SUPPLIER, amount_fen=50_000_001, today=TODAY, **apply)  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition, match="too late"):
        r.request_financing(x, supplier_uscc=SUPPLIER, amount_fen=1, today=x.due, **apply)  # type: ignore[arg-type]


def test_payment_prompts_come_at_7_days_1_day_and_the_due_date_then_a_financed_receivable_is_overdue() -> None:
    x = financed()
    due = x.due
    assert r.next_check(x) == due - timedelta(days=7)
    seen: list[tuple[date, r.Change, int]] = []
    day = TODAY
    while (check := r.next_check(x)) is not None:
        day = max(day, check)
        x, changes = r.mature(x, today=day, at=NOW)
        seen += [(day, change, days) for change, days in changes]
    assert seen == [(due - timedelta(days=7), r.Change.PAYMENT_DUE, 7),
                    (due - timedelta(days=1), r.Change.PAYMENT_DUE, 1),
                    (due, r.Change.PAYMENT_DUE, 0), (due + timedelta(days=1), r.Change.OVERDUE, -1)]
    assert x.status == r.Status.OVERDUE and x.history[-1].actor == r.SERVICE_ACTOR
    assert r.settle(x, institution_id="bank-a", at=NOW).status == r.Status.SETTLED


def test_a_late_maturity_pass_sends_only_the_nearest_prompt_and_a_settled_receivable_none() -> None:
    x = confirmed()
    late, changes = r.mature(x, today=x.due - timedelta(days=1), at=NOW)
    assert changes == [(r.Change.PAYMENT_DUE, 1)]
    assert r.next_check(late) == x.due
    assert r.next_check(r.settle(x, supplier_uscc=SUPPLIER, at=NOW)) is None
    with pytest.raises(PermissionDenied):  # no financier to report it
        r.settle(x, institution_id="bank-a", at=NOW)
    unfinanced, changes = r.mature(late, today=x.due + timedelta(days=3), at=NOW)
    assert changes == [] and unfinanced.status == r.Status.CONFIRMED and r.next_check(unfinanced) is None


ACTIONS = st.lists(st.sampled_from(["confirm", "dispute", "apply-a", "apply-b", "approve", "decline", "withdraw",
                                    "settle", "mature"]), max_size=12)


@given(ACTIONS)
def test_whatever_happens_a_receivable_is_financed_at_most_once_and_paid_to_its_financier(actions: list[str]) -> None:
    x = r.register(upload(), receivable_id="rcv", now=NOW)
    day = TODAY
    for action in actions:
        try:
            if action == "confirm":
                x = r.confirm(x, debtor_uscc=DEBTOR, amount_fen=0, at=NOW)[0]
            elif action == "dispute":
                x = r.dispute(x, debtor_uscc=DEBTOR, reason="no", at=NOW)
            elif action.startswith("apply"):
                x = r.request_financing(x, supplier_uscc=SUPPLIER, institution_id=f"bank-{action[-1]}", amount_fen=1,
                                        kind=r.FinancingKind.PLEDGE, today=day, at=NOW)
            elif action in ("approve", "decline") and x.pending is not None:
                x = r.decide_financing(x, institution_id=x.pending.institution_id, approve=action == "approve",
                                       rate_bps=300, decline_reason="no", today=day, at=NOW)
            elif action == "withdraw":
                x = r.withdraw_financing(x, supplier_uscc=SUPPLIER, reason="", at=NOW)
            elif action == "settle":
                x = r.settle(x, supplier_uscc=SUPPLIER, institution_id=x.financier, at=NOW)
            elif action == "mature":
                day += timedelta(days=30)
                x = r.mature(x, today=day, at=NOW)[0]
        except (FailedPrecondition, PermissionDenied, ValidationFailed):
            pass
        approved = [f for f in x.financings if f.approved]
        assert len(approved) <= 1
        assert x.current_payee == (approved[0].institution_id if approved else SUPPLIER)
        assert all(b.status in r.TRANSITIONS[a.status] for a, b in zip(x.history, x.history[1:], strict=False))
        assert x.version >= len(x.history)


def test_a_pending_application_lapses_at_the_due_date_and_a_late_approval_is_refused() -> None:
    x = r.request_financing(confirmed(), supplier_uscc=SUPPLIER, institution_id="bank-a", amount_fen=1,
                            kind=r.FinancingKind.PLEDGE, today=TODAY, at=NOW)
    with pytest.raises(FailedPrecondition, match="too late"):
        r.decide_financing(x, institution_id="bank-a", approve=True, rate_bps=300, decline_reason="", today=x.due,
                           at=NOW)
    assert r.next_check(x) == x.due - timedelta(days=7)
    lapsed, changes = r.mature(x, today=x.due, at=NOW)
    assert changes == [(r.Change.PAYMENT_DUE, 0), (r.Change.FINANCING_DECLINED, 0)]
    assert (lapsed.status, lapsed.current_payee, lapsed.pending, lapsed.financier) == (
        r.Status.CONFIRMED, SUPPLIER, None, "")
    assert "lapsed" in lapsed.financings[-1].decline_reason


def test_a_prompt_says_the_days_really_left() -> None:
    x = confirmed(due_date=f"{TODAY + timedelta(days=5)}")
    assert r.mature(x, today=TODAY, at=NOW)[1] == [(r.Change.PAYMENT_DUE, 5)]


def test_the_notifier_tells_the_financier_of_a_lapse_or_a_withdrawal_but_not_of_its_own_decline() -> None:
    """The contract between the two services: the event says enough for the notifier to tell apart
    a decline by the financier, a lapse at the due date and a withdrawal by the supplier."""
    from services.demand.receivables import mapping as published
    from services.notifier import domain as notifier
    from services.notifier import mapping as received

    pending = r.request_financing(confirmed(), supplier_uscc=SUPPLIER, institution_id="bank-a", amount_fen=1,
                                  kind=r.FinancingKind.PLEDGE, today=TODAY, at=NOW)
    declined = r.decide_financing(pending, institution_id="bank-a", approve=False, rate_bps=0, decline_reason="no",
                                  today=TODAY, at=NOW)
    lapsed, _ = r.mature(pending, today=pending.due, at=NOW)
    withdrawn = r.withdraw_financing(pending, supplier_uscc=SUPPLIER, reason="", at=NOW)
    told = {}
    for name, x, change in (("declined", declined, r.Change.FINANCING_DECLINED),
                            ("lapsed", lapsed, r.Change.FINANCING_DECLINED),
                            ("withdrawn", withdrawn, r.Change.FINANCING_WITHDRAWN)):
        c = received.receivable_change(published.changed(x, change), NOW)
        told[name] = (c.change, [(n.recipient_kind.label, n.recipient_id) for n in notifier.for_receivable(c)])
    assert told == {
        "declined": ("FINANCING_DECLINED", [("enterprise", SUPPLIER)]),
        "lapsed": ("FINANCING_LAPSED", [("enterprise", SUPPLIER), ("institution", "bank-a")]),
        "withdrawn": ("FINANCING_WITHDRAWN", [("institution", "bank-a")]),
    }
