"""The notifier's pure core: which notifications a match gives rise to, ids and texts."""

from __future__ import annotations

import string
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from meshkit.errors import ValidationFailed
from services.notifier import domain, templates
from services.notifier.domain import LeadRef, MatchOutcome, RecipientKind

AT = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def outcome(*institutions: str, explanation: str = "") -> MatchOutcome:
    return MatchOutcome(
        demand_id="d-1", enterprise_uscc="91350200MA2XYZ1234",
        leads=tuple(LeadRef(f"l-{i}", inst, f"{inst}-p", 80 - i, i + 1,
                            datetime(2026, 11, 29, 8, 0, tzinfo=UTC)) for i, inst in enumerate(institutions)),
        no_match_explanation=explanation,
    )


def test_every_kind_has_both_languages_with_the_same_fields() -> None:
    for kind in templates.KINDS:
        names = {lang: {name for text in templates.TEMPLATES[(kind, lang)]
                        for _, name, _, _ in string.Formatter().parse(text) if name}
                 for lang in templates.LANGUAGES}
        assert names["en"] == names["zh"], kind


def test_a_match_notifies_the_enterprise_and_each_institution() -> None:
    notes = domain.for_match(outcome("icbc-xm", "ccb-sz"), AT)
    assert [(n.recipient_kind, n.recipient_id, n.kind) for n in notes] == [
        (RecipientKind.ENTERPRISE, "91350200MA2XYZ1234", "demand.matched"),
        (RecipientKind.INSTITUTION, "icbc-xm", "lead.issued"),
        (RecipientKind.INSTITUTION, "ccb-sz", "lead.issued"),
    ]
    assert "2 financial product(s)" in notes[0].body and "d-1" in notes[0].body
    assert "2 款" in notes[0].body_zh
    assert notes[1].lead_id == "l-0" and "2026-11-29 08:00 UTC" in notes[1].body
    assert all(n.created_at == AT for n in notes)


def test_the_enterprise_is_told_the_days_until_the_last_lead_is_due() -> None:
    due_in = [timedelta(hours=12), timedelta(hours=49)]  # two institutions, SLAs of their own
    match = replace(outcome("icbc-xm", "ccb-sz"), leads=tuple(
        replace(lead, contact_due_at=AT + d) for lead, d in zip(outcome("icbc-xm", "ccb-sz").leads, due_in,
                                                                strict=True)))
    [told, *_] = domain.for_match(match, AT)
    assert "within 3 days" in told.body and "3 天内" in told.body_zh  # 49 h: the third day
    assert domain.days_to_contact(match.leads[:1], AT) == 1
    assert domain.days_to_contact((replace(match.leads[0], contact_due_at=None),), AT) == 3  # the default 72 h
    assert domain.days_to_contact((replace(match.leads[0], contact_due_at=AT + timedelta(hours=24)),), AT) == 1


def test_no_match_carries_the_explanation_and_every_other_hint() -> None:
    [note] = domain.for_match(outcome(explanation="rate cap below every product"), AT)
    assert note.kind == "demand.no_match"
    assert note.body.endswith("rate cap below every product.")
    assert note.text("zh-CN") == (note.title_zh, note.body_zh)
    hinted = replace(outcome(explanation="none of 9 fits; a term of 24 months would make 3 products eligible"),
                     hints=("a term of 24 months would make 3 products eligible",
                            "adding equipment as collateral would make 2 more eligible"))
    [note] = domain.for_match(hinted, AT)
    assert note.body.endswith("eligible. Other changes that would help: adding equipment as collateral would "
                              "make 2 more eligible.")
    assert note.body.count("a term of 24 months") == 1  # the first hint is the explanation's own
    assert "其他可行的调整：adding equipment" in note.body_zh


def test_ids_are_stable_and_depend_on_the_fact_and_recipient() -> None:
    first = [n.notification_id for n in domain.for_match(outcome("a", "b"), AT)]
    again = [n.notification_id for n in domain.for_match(outcome("a", "b"), datetime.now(UTC))]
    assert first == again
    assert len(set(first)) == 3
    other_leads = domain.for_match(outcome("a", "b", "c"), AT)
    assert other_leads[0].notification_id != first[0]  # a re-match with other leads is news
    assert [n.notification_id for n in other_leads[1:3]] == first[1:]  # the same leads are not


def test_problems_name_what_is_missing() -> None:
    bad = MatchOutcome(demand_id="", enterprise_uscc="", leads=(LeadRef("", "", "", 0, 0),))
    assert len(domain.problems(bad)) == 3
    assert domain.problems(outcome("a")) == []


def test_query_validation_names_every_field() -> None:
    with pytest.raises(ValidationFailed) as err:
        domain.validate_query(0, " ")
    assert {v.field for v in err.value.violations} == {"recipient_kind", "recipient_id"}
    domain.validate_query(2, "icbc-xm")


def receivable_change(change: str, **kw: object) -> domain.ReceivableChange:
    base: dict[str, object] = dict(receivable_id="rcv-1", version=3, change=change, document_number="INV-7",
                                   amount_fen=125_000_000, supplier_uscc="S1", debtor_uscc="D1",
                                   due_date="2027-01-28", current_payee="S1", financier="", reason="", days_to_due=0,
                                   at=AT)
    base.update(kw)
    return domain.ReceivableChange(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("change", "extra", "told"), [
    ("UPLOADED", {}, [("enterprise", "D1")]),
    ("REGISTERED_BY_DEBTOR", {}, [("enterprise", "S1")]),
    ("BLOCKED_DUPLICATE", {}, [("enterprise", "S1")]),
    ("DISPUTED", {"reason": "never delivered"}, [("enterprise", "S1")]),
    ("FINANCING_REQUESTED", {"financier": "bank-a"}, [("institution", "bank-a")]),
    ("FINANCED", {"financier": "bank-a", "current_payee": "bank-a"},
     [("enterprise", "S1"), ("enterprise", "D1"), ("institution", "bank-a")]),
    ("PAYMENT_DUE", {"days_to_due": 1}, [("enterprise", "D1")]),
    ("FINANCING_DECLINED", {"reason": "debtor rating"}, [("enterprise", "S1")]),
    ("FINANCING_LAPSED", {"financier": "bank-a"}, [("enterprise", "S1"), ("institution", "bank-a")]),
    ("FINANCING_WITHDRAWN", {"financier": "bank-a"}, [("institution", "bank-a")]),
    ("SETTLED", {}, [("enterprise", "S1"), ("enterprise", "D1")]),  # never financed: no financier to tell
])
def test_a_receivable_s_change_tells_the_parties_it_concerns(change: str, extra: dict[str, object],
                                                              told: list[tuple[str, str]]) -> None:
    c = receivable_change(change, **extra)
    assert domain.receivable_problems(c) == []
    notes = domain.for_receivable(c)
    assert [(n.recipient_kind.label, n.recipient_id) for n in notes] == told
    assert all(n.kind == domain.RECEIVABLE_NOTICE and "1,250,000" in n.body for n in notes)
    assert len({n.notification_id for n in notes}) == len(notes)
    assert domain.for_receivable(c) == notes  # the same fact again: the same notifications


def test_the_payment_prompt_names_the_payee_and_the_days_left() -> None:
    [note] = domain.for_receivable(receivable_change("PAYMENT_DUE", days_to_due=7, current_payee="bank-a"))
    assert "Due in 7 day(s): pay bank-a." in note.body and "7 天后到期：请向 bank-a 付款。" in note.body_zh
    [today] = domain.for_receivable(receivable_change("PAYMENT_DUE", current_payee="S1"))
    assert "Due today: pay S1." in today.body
    assert domain.receivable_problems(receivable_change("")) == ["change UNSPECIFIED is not a receivable change"]


def test_a_maturing_loan_tells_the_enterprise_and_its_lender_what_to_do() -> None:
    due = domain.RenewalDue(lead_id="l-9", enterprise_uscc="U9", institution_id="bank-a", amount_fen=300_000_000,
                            rate_bps=385, term_months=12, matures_on="2026-12-28", days=30, first_loan=True, at=AT)
    assert domain.renewal_problems(due) == []
    enterprise, lender = domain.for_renewal(due)
    assert (enterprise.recipient_kind, enterprise.recipient_id) == (RecipientKind.ENTERPRISE, "U9")
    assert (lender.recipient_kind, lender.recipient_id) == (RecipientKind.INSTITUTION, "bank-a")
    assert "3,000,000 yuan" in enterprise.body and "in 30 day(s)" in enterprise.body
    assert "renewal need filed on the platform" in enterprise.body and "续贷" in enterprise.body_zh
    assert "Contact the enterprise" in lender.body
    assert domain.for_renewal(due) == [enterprise, lender]  # the same loan: the same notices
    assert domain.renewal_problems(replace(due, matures_on="")) == ["matures_on is empty"]
