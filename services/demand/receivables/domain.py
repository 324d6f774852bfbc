"""The receivable registry's pure core: validation, fingerprints and near-duplicates, the life
cycle as a transition table, financing once, the payee change, and the payment prompts.

A receivable's fingerprint is the SHA-256 of its debtor, supplier, normalised document number
(upper case, letters and digits only), document date and face amount: the same invoice uploaded
twice, however its number is typed, has the same fingerprint, and two live receivables never
share one (a second is kept as BLOCKED_DUPLICATE). Near-duplicates (the same number with another
date or amount; the same amount and date under another number) are flagged, not blocked.
Dates are calendar days in UTC.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime
from enum import IntEnum

from meshkit.errors import FailedPrecondition, PermissionDenied, Violations

MAX_AMOUNT_FEN = 10_000_000_000_000  # 100 billion yuan, as for demands
MAX_RATE_BPS = 3600
MAX_NUMBER_CHARS = 64
MAX_REASON_CHARS = 500
MAX_TERM_DAYS = 366 * 3  # from the document date to the due date
REMINDER_DAYS = (7, 1, 0)  # payment prompts, in days before the due date
SERVICE_ACTOR = "demand"


class Status(IntEnum):  # the values of finmesh.receivable.v1.ReceivableStatus
    PENDING_CONFIRMATION = 1
    CONFIRMED = 2
    DISPUTED = 3
    BLOCKED_DUPLICATE = 4
    FINANCING = 5
    FINANCED = 6
    OVERDUE = 7
    SETTLED = 8


class DocumentKind(IntEnum):
    CONTRACT = 1
    PURCHASE_ORDER = 2
    INVOICE = 3


class Party(IntEnum):
    SUPPLIER = 1
    DEBTOR = 2


class FinancingKind(IntEnum):
    PLEDGE = 1
    ASSIGNMENT = 2


class Change(IntEnum):  # the values of finmesh.receivable.v1.ChangeKind
    UPLOADED = 1
    CONFIRMED = 2
    DISPUTED = 3
    BLOCKED_DUPLICATE = 4
    FINANCING_REQUESTED = 5
    FINANCED = 6
    FINANCING_DECLINED = 7
    PAYMENT_DUE = 8
    OVERDUE = 9
    SETTLED = 10
    FINANCING_WITHDRAWN = 11


S = Status
TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.PENDING_CONFIRMATION: frozenset({S.CONFIRMED, S.DISPUTED}),
    S.CONFIRMED: frozenset({S.FINANCING, S.SETTLED}),
    S.FINANCING: frozenset({S.FINANCED, S.CONFIRMED}),
    S.FINANCED: frozenset({S.OVERDUE, S.SETTLED}),
    S.OVERDUE: frozenset({S.SETTLED}),
    S.DISPUTED: frozenset(),
    S.BLOCKED_DUPLICATE: frozenset(),
    S.SETTLED: frozenset(),
}
# Receivables that hold their fingerprint: another with the same one is a duplicate.
LIVE: frozenset[Status] = frozenset(set(Status) - {S.DISPUTED, S.BLOCKED_DUPLICATE})
# Receivables the maturity pass watches: the debtor still has to pay.
UNPAID: frozenset[Status] = frozenset({S.CONFIRMED, S.FINANCING, S.FINANCED, S.OVERDUE})


def check_transition(current: Status, new: Status) -> None:
    if new not in TRANSITIONS[current]:
        raise FailedPrecondition(f"a receivable that is {current.name} cannot become {new.name}")


@dataclass(frozen=True)
class Upload:
    """A receivable as its uploader describes it."""

    request_id: str
    supplier_uscc: str
    debtor_uscc: str
    document_kind: int
    document_number: str
    document_date: str  # YYYY-MM-DD
    face_amount_fen: int
    due_date: str  # YYYY-MM-DD
    uploaded_by: int

    @property
    def uploader(self) -> str:
        return self.debtor_uscc if self.uploaded_by == Party.DEBTOR else self.supplier_uscc


@dataclass(frozen=True)
class Financing:
    institution_id: str
    amount_fen: int
    kind: FinancingKind
    requested_at: datetime
    decided_at: datetime | None = None
    approved: bool = False
    rate_bps: int = 0
    decline_reason: str = ""
    withdrawn: bool = False  # by the supplier, before the financier decided


@dataclass(frozen=True)
class NearDuplicate:
    receivable_id: str
    reason: str


@dataclass(frozen=True)
class StatusChange:
    status: Status
    at: datetime
    actor: str
    reason: str = ""


@dataclass(frozen=True)
class Receivable:
    receivable_id: str
    upload: Upload
    fingerprint: str
    status: Status
    history: tuple[StatusChange, ...]
    created_at: datetime
    version: int = 1
    confirmed_amount_fen: int = 0
    duplicate_of: str = ""
    near_duplicates: tuple[NearDuplicate, ...] = ()
    financings: tuple[Financing, ...] = ()
    reminders_sent: tuple[int, ...] = ()
    dispute_reason: str = ""

    @property
    def due(self) -> date:
        return date.fromisoformat(self.upload.due_date)

    @property
    def financier(self) -> str:
        """The institution that financed it ("" if none)."""
        return next((f.institution_id for f in self.financings if f.approved), "")

    @property
    def current_payee(self) -> str:
        """Whom the debtor pays: the financier once it is financed, else the supplier (its USCC)."""
        return self.financier or self.upload.supplier_uscc

    @property
    def pending(self) -> Financing | None:
        """The application being considered (FINANCING)."""
        last = self.financings[-1] if self.financings else None
        return last if last is not None and last.decided_at is None else None


# -- uploading -------------------------------------------------------------------------------------------


def normalised_number(number: str) -> str:
    """A document number as compared: upper case, letters and digits only ("inv-2026/0042 " = "INV20260042")."""
    return re.sub(r"[\W_]", "", number).upper()


def fingerprint(u: Upload) -> str:
    parts = (u.debtor_uscc, u.supplier_uscc, normalised_number(u.document_number), u.document_date,
             str(u.face_amount_fen))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _parse_date(value: str) -> date | None:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def validate(u: Upload, *, today: date, uscc_problem: Callable[[str], str | None]) -> None:
    """Every wrong field at once (:class:`ValidationFailed`). ``uscc_problem(code)`` says why a code
    is not a valid USCC, or None."""
    v = Violations()
    v.require("request_id", u.request_id)
    for field, code in (("receivable.supplier_uscc", u.supplier_uscc), ("receivable.debtor_uscc", u.debtor_uscc)):
        problem = uscc_problem(code)
        v.check(problem is None, field, str(problem))
    v.check(not u.supplier_uscc or u.supplier_uscc != u.debtor_uscc, "receivable.debtor_uscc",
            "must not be the supplier")
    v.check(u.document_kind in DocumentKind._value2member_map_, "receivable.document_kind",
            "must be CONTRACT, PURCHASE_ORDER or INVOICE")
    v.check(bool(normalised_number(u.document_number)), "receivable.document_number",
            "is required (letters or digits)")
    v.check(len(u.document_number) <= MAX_NUMBER_CHARS, "receivable.document_number",
            f"must be at most {MAX_NUMBER_CHARS} characters")
    v.check(0 < u.face_amount_fen <= MAX_AMOUNT_FEN, "receivable.face_amount_fen",
            f"must be positive and at most {MAX_AMOUNT_FEN} fen")
    v.check(u.uploaded_by in Party._value2member_map_, "receivable.uploaded_by", "must be SUPPLIER or DEBTOR")
    issued, due = _parse_date(u.document_date), _parse_date(u.due_date)
    v.check(issued is not None, "receivable.document_date", "must be a date YYYY-MM-DD")
    v.check(due is not None, "receivable.due_date", "must be a date YYYY-MM-DD")
    if issued is not None:
        v.check(issued <= today, "receivable.document_date", "must not be in the future")
    if due is not None:
        v.check(due >= today, "receivable.due_date", "must not be in the past: a receivable past due is not financed")
        if issued is not None:
            v.check(issued < due, "receivable.due_date", "must be after the document date")
            v.check((due - issued).days <= MAX_TERM_DAYS, "receivable.due_date",
                    f"must be at most {MAX_TERM_DAYS} days after the document date")
    v.raise_if_any()


def near_duplicates(u: Upload, others: Iterable[Receivable]) -> tuple[NearDuplicate, ...]:
    """The live receivables of the same debtor and supplier that look like ``u`` without being it."""
    number, mine = normalised_number(u.document_number), fingerprint(u)
    found = []
    for r in others:
        o = r.upload
        if r.status not in LIVE or r.fingerprint == mine or (o.debtor_uscc, o.supplier_uscc) != (
                u.debtor_uscc, u.supplier_uscc):
            continue
        if normalised_number(o.document_number) == number:
            found.append(NearDuplicate(r.receivable_id, "the same document number with another date or amount"))
        elif (o.face_amount_fen, o.document_date) == (u.face_amount_fen, u.document_date):
            found.append(NearDuplicate(r.receivable_id, "the same amount and document date under another number"))
    return tuple(sorted(found, key=lambda n: n.receivable_id))


def register(u: Upload, *, receivable_id: str, now: datetime, duplicate_of: str = "",
             near: tuple[NearDuplicate, ...] = ()) -> Receivable:
    """A new receivable (validated): BLOCKED_DUPLICATE if ``duplicate_of`` (the live one with its
    fingerprint); else CONFIRMED for its face amount if the debtor uploaded it, PENDING_CONFIRMATION
    if the supplier did."""
    actor = f"enterprise:{u.uploader}"
    if duplicate_of:
        status, reason = S.BLOCKED_DUPLICATE, f"the same receivable is registered as {duplicate_of}"
    elif u.uploaded_by == Party.DEBTOR:
        status, reason = S.CONFIRMED, "uploaded by the debtor"
    else:
        status, reason = S.PENDING_CONFIRMATION, "uploaded by the supplier: the debtor confirms it"
    return Receivable(
        receivable_id=receivable_id, upload=u, fingerprint=fingerprint(u), status=status,
        history=(StatusChange(status, now, actor, reason),), created_at=now, duplicate_of=duplicate_of,
        near_duplicates=near,
        confirmed_amount_fen=u.face_amount_fen if status == S.CONFIRMED else 0,
    )


def change_of_upload(r: Receivable) -> Change:
    return Change.BLOCKED_DUPLICATE if r.status == S.BLOCKED_DUPLICATE else Change.UPLOADED


# -- changes ---------------------------------------------------------------------------------------------


def _moved(r: Receivable, status: Status, at: datetime, actor: str, reason: str = "", **fields: object) -> Receivable:
    check_transition(r.status, status)
    return replace(r, status=status, history=(*r.history, StatusChange(status, at, actor, reason)),
                   version=r.version + 1, **fields)  # type: ignore[arg-type]


def _as_debtor(r: Receivable, debtor_uscc: str) -> None:
    if debtor_uscc != r.upload.debtor_uscc:
        raise PermissionDenied(f"only the debtor ({r.upload.debtor_uscc}) may confirm or dispute receivable "
                               f"{r.receivable_id}")


def confirm(r: Receivable, *, debtor_uscc: str, amount_fen: int, at: datetime) -> tuple[Receivable, bool]:
    """The debtor's confirmation, irrevocable: for ``amount_fen`` (0: the face amount), at most the
    face amount. Confirming again for the same amount changes nothing (False); for another, refused."""
    _as_debtor(r, debtor_uscc)
    amount = amount_fen or r.upload.face_amount_fen
    v = Violations()
    v.check(0 < amount <= r.upload.face_amount_fen, "confirmed_amount_fen",
            f"must be positive and at most the face amount ({r.upload.face_amount_fen} fen)")
    v.raise_if_any()
    if r.status != S.PENDING_CONFIRMATION and r.confirmed_amount_fen:
        if r.confirmed_amount_fen == amount:
            return r, False
        raise FailedPrecondition(f"receivable {r.receivable_id} was confirmed for {r.confirmed_amount_fen} fen: "
                                 "a confirmation is irrevocable")
    reason = "confirmed by the debtor" + ("" if amount == r.upload.face_amount_fen else f" for {amount} fen")
    return _moved(r, S.CONFIRMED, at, f"enterprise:{debtor_uscc}", reason, confirmed_amount_fen=amount), True


def dispute(r: Receivable, *, debtor_uscc: str, reason: str, at: datetime) -> Receivable:
    _as_debtor(r, debtor_uscc)
    v = Violations()
    v.check(bool(reason.strip()), "reason", "is required: the supplier is told why")
    v.check(len(reason) <= MAX_REASON_CHARS, "reason", f"must be at most {MAX_REASON_CHARS} characters")
    v.raise_if_any()
    return _moved(r, S.DISPUTED, at, f"enterprise:{debtor_uscc}", reason.strip(), dispute_reason=reason.strip())


def request_financing(r: Receivable, *, supplier_uscc: str, institution_id: str, amount_fen: int, kind: int,
                      today: date, at: datetime) -> Receivable:
    """The supplier applies to one financier for at most the confirmed amount, before the due date."""
    if supplier_uscc != r.upload.supplier_uscc:
        raise PermissionDenied(f"only the supplier ({r.upload.supplier_uscc}) may apply to finance receivable "
                               f"{r.receivable_id}")
    v = Violations()
    v.require("institution_id", institution_id)
    v.check(kind in FinancingKind._value2member_map_, "kind", "must be PLEDGE or ASSIGNMENT")
    v.raise_if_any()
    if r.status == S.FINANCING and r.pending is not None:
        raise FailedPrecondition(f"receivable {r.receivable_id} is being considered by {r.pending.institution_id}: "
                                 "one application at a time")
    if r.status in (S.FINANCED, S.OVERDUE):
        raise FailedPrecondition(f"receivable {r.receivable_id} is financed already (by {r.financier}): "
                                 "a receivable is financed once")
    check_transition(r.status, S.FINANCING)
    v.check(0 < amount_fen <= r.confirmed_amount_fen, "amount_fen",
            f"must be positive and at most the confirmed amount ({r.confirmed_amount_fen} fen)")
    v.raise_if_any()
    if today >= r.due:
        raise FailedPrecondition(f"receivable {r.receivable_id} is due on {r.upload.due_date}: too late to finance")
    application = Financing(institution_id, amount_fen, FinancingKind(kind), requested_at=at)
    return _moved(r, S.FINANCING, at, f"enterprise:{supplier_uscc}", f"applied to {institution_id}",
                  financings=(*r.financings, application))


def decide_financing(r: Receivable, *, institution_id: str, approve: bool, rate_bps: int, decline_reason: str,
                     today: date, at: datetime) -> Receivable:
    """The financier applied to approves (the payee becomes the financier) before the due date, or
    declines (CONFIRMED again: the supplier may apply elsewhere)."""
    pending = r.pending
    if r.status != S.FINANCING or pending is None:
        raise FailedPrecondition(f"receivable {r.receivable_id} is {r.status.name}: no application is pending")
    if pending.institution_id != institution_id:
        raise PermissionDenied(f"the application for receivable {r.receivable_id} was made to another institution")
    if approve and today >= r.due:
        raise FailedPrecondition(f"receivable {r.receivable_id} is due on {r.upload.due_date}: too late to finance "
                                 "(the application lapses)")
    v = Violations()
    if approve:
        v.check(0 <= rate_bps <= MAX_RATE_BPS, "rate_bps", f"must be 0-{MAX_RATE_BPS}")
    else:
        v.check(bool(decline_reason.strip()), "decline_reason", "is required: the supplier is told why")
        v.check(len(decline_reason) <= MAX_REASON_CHARS, "decline_reason",
                f"must be at most {MAX_REASON_CHARS} characters")
    v.raise_if_any()
    decided = replace(pending, decided_at=at, approved=approve, rate_bps=rate_bps if approve else 0,
                      decline_reason="" if approve else decline_reason.strip())
    financings = (*r.financings[:-1], decided)
    actor = f"institution:{institution_id}"
    if approve:
        return _moved(r, S.FINANCED, at, actor, f"financed: the payee is {institution_id} now",
                      financings=financings)
    return _moved(r, S.CONFIRMED, at, actor, f"financing declined: {decided.decline_reason}", financings=financings)


def withdraw_financing(r: Receivable, *, supplier_uscc: str, reason: str, at: datetime) -> Receivable:
    """The supplier withdraws its pending application (CONFIRMED again: it may apply elsewhere)."""
    if supplier_uscc != r.upload.supplier_uscc:
        raise PermissionDenied(f"only the supplier ({r.upload.supplier_uscc}) may withdraw the application for "
                               f"receivable {r.receivable_id}")
    pending = r.pending
    if r.status != S.FINANCING or pending is None:
        raise FailedPrecondition(f"receivable {r.receivable_id} is {r.status.name}: no application is pending")
    v = Violations()
    v.check(len(reason) <= MAX_REASON_CHARS, "reason", f"must be at most {MAX_REASON_CHARS} characters")
    v.raise_if_any()
    why = "withdrawn by the supplier" + (f": {reason.strip()}" if reason.strip() else "")
    withdrawn = replace(pending, decided_at=at, withdrawn=True, decline_reason=why)
    return _moved(r, S.CONFIRMED, at, f"enterprise:{supplier_uscc}", f"financing {why}",
                  financings=(*r.financings[:-1], withdrawn))


def settle(r: Receivable, *, supplier_uscc: str = "", institution_id: str = "", at: datetime) -> Receivable:
    """Paid, as reported by the current payee: the supplier (by its USCC) while it is not financed,
    the financier (``institution_id``, authenticated by the caller) once it is."""
    if institution_id:
        ok, actor = bool(r.financier) and institution_id == r.financier, f"institution:{institution_id}"
    else:
        ok, actor = not r.financier and supplier_uscc == r.upload.supplier_uscc, f"enterprise:{supplier_uscc}"
    if not ok:
        raise PermissionDenied(f"only the current payee ({r.current_payee}) may report receivable "
                               f"{r.receivable_id} paid" + (" (with its API key)" if r.financier else ""))
    return _moved(r, S.SETTLED, at, actor, "paid to the payee")


# -- maturity --------------------------------------------------------------------------------------------


def next_check(r: Receivable) -> date | None:
    """The day the maturity pass must next look at ``r`` (a prompt or overdue), None if never."""
    if r.status not in UNPAID:
        return None
    days = [r.due.toordinal() - d for d in REMINDER_DAYS if d not in r.reminders_sent]
    if r.status == S.FINANCED:
        days.append(r.due.toordinal() + 1)
    if r.status == S.FINANCING:
        days.append(r.due.toordinal())  # a pending application lapses then
    return date.fromordinal(min(days)) if days else None


def mature(r: Receivable, *, today: date, at: datetime) -> tuple[Receivable, list[tuple[Change, int]]]:
    """What the maturity pass does on ``today``: the payment prompt now due (only the nearest one, if
    the pass ran late), and FINANCED past its due date becomes OVERDUE. Returns the receivable and
    its changes (with days to due for a prompt)."""
    changes: list[tuple[Change, int]] = []
    if r.status not in UNPAID:
        return r, changes
    left = (r.due - today).days
    due_now = [d for d in REMINDER_DAYS if d not in r.reminders_sent and left <= d]
    if due_now and left >= 0:
        r = replace(r, reminders_sent=tuple(sorted({*r.reminders_sent, *due_now}, reverse=True)), version=r.version + 1)
        changes.append((Change.PAYMENT_DUE, left))
    elif due_now:  # the pass ran after the due date: those prompts are moot
        r = replace(r, reminders_sent=tuple(sorted({*r.reminders_sent, *due_now}, reverse=True)), version=r.version + 1)
    pending = r.pending
    if r.status == S.FINANCING and pending is not None and left <= 0:  # too late to finance: it lapses
        lapsed = replace(pending, decided_at=at, decline_reason="the application lapsed at the due date")
        r = _moved(r, S.CONFIRMED, at, SERVICE_ACTOR, f"financing declined: {lapsed.decline_reason}",
                   financings=(*r.financings[:-1], lapsed))
        changes.append((Change.FINANCING_DECLINED, left))
    if r.status == S.FINANCED and left < 0:
        r = _moved(r, S.OVERDUE, at, SERVICE_ACTOR, f"due on {r.upload.due_date}, not reported paid")
        changes.append((Change.OVERDUE, left))
    return r, changes
