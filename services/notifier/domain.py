"""The pure core of the notifier: which notifications an event gives rise to, and their texts.

No I/O and no protobuf. Each notification's id is derived from the fact it announces and its
recipient, so handling the same fact twice yields the same notification (stored once).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from meshkit.contact_sla import DEFAULT_CONTACT_SLA_HOURS, MAX_CONTACT_SLA_HOURS, contact_sla
from meshkit.errors import Violations
from meshkit.ids import stable_id
from services.notifier import templates

DEMAND_MATCHED = "demand.matched"
DEMAND_NO_MATCH = "demand.no_match"
DEMAND_REMATCHED = "demand.rematched"
DEMAND_RECEIVED = "demand.received"
DEMAND_STATUS = "demand.status"
LEAD_ISSUED = "lead.issued"
LEAD_OUTCOME = "lead.outcome"
LEAD_WITHDRAWN = "lead.withdrawn"
LEAD_REMINDER = "lead.reminder"
LEAD_ESCALATED = "lead.escalated"
ROADSHOW_NOTICE = "roadshow.notice"
RECEIVABLE_NOTICE = "receivable.notice"
LOAN_RENEWAL_DUE = "loan.renewal_due"



class RecipientKind(IntEnum):
    """Mirrors ``finmesh.notification.v1.RecipientKind``."""

    UNSPECIFIED = 0
    ENTERPRISE = 1
    INSTITUTION = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class LeadRef:
    """What the notifier needs of one lead."""

    lead_id: str
    institution_id: str
    product_id: str
    score: int
    rank: int
    contact_due_at: datetime | None = None


@dataclass(frozen=True)
class MatchOutcome:
    """The outcome of matching one demand: its leads, or why there are none."""

    demand_id: str
    enterprise_uscc: str
    leads: tuple[LeadRef, ...]
    no_match_explanation: str = ""
    additional: bool = False  # leads added to a demand matched before (a re-match)
    hints: tuple[str, ...] = ()  # no match: what would make products eligible, best first (the first: explanation)
    origin: str = ""  # of the added leads, e.g. "SLA_REROUTE", "REMATCH_AFTER_DECLINE"


@dataclass(frozen=True)
class Notification:
    notification_id: str
    recipient_kind: RecipientKind
    recipient_id: str
    kind: str
    title: str
    body: str
    title_zh: str
    body_zh: str
    created_at: datetime
    demand_id: str = ""
    lead_id: str = ""
    read: bool = False

    def text(self, language: str) -> tuple[str, str]:
        """(title, body) in ``language`` ("zh…" gives Chinese, anything else English)."""
        return (self.title_zh, self.body_zh) if language.startswith("zh") else (self.title, self.body)


def notification_id(fact: str, kind: RecipientKind, recipient_id: str) -> str:
    return stable_id("notification", fact, f"{kind.label}:{recipient_id}")


def _compose(fact: str, kind: RecipientKind, recipient_id: str, what: str, at: datetime, *,
             demand_id: str = "", lead_id: str = "", localized: dict[str, tuple[str, str]] | None = None,
             **fields: object) -> Notification:
    """``localized`` holds fields whose value differs by language: name -> (English, Chinese)."""
    fields = {"demand_id": demand_id, "lead_id": lead_id, **fields}
    loc = localized or {}
    title, body = templates.render(what, "en", **fields, **{k: en for k, (en, _) in loc.items()})
    title_zh, body_zh = templates.render(what, "zh", **fields, **{k: zh for k, (_, zh) in loc.items()})
    return Notification(
        notification_id=notification_id(fact, kind, recipient_id), recipient_kind=kind, recipient_id=recipient_id,
        kind=what, title=title, body=body, title_zh=title_zh, body_zh=body_zh, created_at=at,
        demand_id=demand_id, lead_id=lead_id,
    )


def _more(hints: tuple[str, ...]) -> tuple[str, str]:
    """The hints beyond the first (which the explanation gives), as a sentence in each language."""
    rest = "; ".join(hints[1:])
    return (f" Other changes that would help: {rest}.", f"其他可行的调整：{rest}。") if rest else ("", "")


def problems(outcome: MatchOutcome) -> list[str]:
    """Why an outcome cannot be notified (empty if it can)."""
    out = []
    if not outcome.demand_id:
        out.append("demand_id is empty")
    if not outcome.enterprise_uscc:
        out.append("enterprise_uscc is empty")
    for i, lead in enumerate(outcome.leads):
        if not lead.lead_id or not lead.institution_id:
            out.append(f"leads[{i}] lacks its lead_id or institution_id")
    return out


def days_to_contact(leads: tuple[LeadRef, ...], at: datetime) -> int:
    """Whole days, rounded up, until the last of ``leads`` is due for contact (each institution has its
    own SLA); the default SLA's for leads that carry no due time."""
    default = timedelta(hours=DEFAULT_CONTACT_SLA_HOURS)
    longest = max((lead.contact_due_at - at if lead.contact_due_at else default for lead in leads), default=default)
    return max(1, -(-longest // timedelta(days=1)))


def for_match(outcome: MatchOutcome, at: datetime) -> list[Notification]:
    """One notification for the enterprise, and one for each institution that received a lead.

    The enterprise's fact is the demand and the set of leads it was told about, so a re-match
    with other leads is news again, while the same outcome replayed is not.
    """
    assert not problems(outcome), problems(outcome)
    sla_days = days_to_contact(outcome.leads, at)
    notes: list[Notification] = []
    if outcome.leads and outcome.additional:
        leads_digest = hashlib.sha256("|".join(sorted(lead.lead_id for lead in outcome.leads)).encode()).hexdigest()
        notes.append(_compose(
            f"{DEMAND_REMATCHED}:{outcome.demand_id}:{leads_digest[:16]}", RecipientKind.ENTERPRISE,
            outcome.enterprise_uscc, DEMAND_REMATCHED, at, demand_id=outcome.demand_id,
            leads=len(outcome.leads), sla_days=sla_days, localized={"reason": ORIGIN_LABELS.get(
                outcome.origin, ("more products fit", "有更多产品符合条件"))},
        ))
    elif outcome.leads:
        leads_digest = hashlib.sha256("|".join(sorted(lead.lead_id for lead in outcome.leads)).encode()).hexdigest()
        notes.append(_compose(
            f"{DEMAND_MATCHED}:{outcome.demand_id}:{leads_digest[:16]}", RecipientKind.ENTERPRISE,
            outcome.enterprise_uscc, DEMAND_MATCHED, at, demand_id=outcome.demand_id,
            leads=len(outcome.leads), sla_days=sla_days,
        ))
    else:
        notes.append(_compose(
            f"{DEMAND_NO_MATCH}:{outcome.demand_id}", RecipientKind.ENTERPRISE, outcome.enterprise_uscc,
            DEMAND_NO_MATCH, at, demand_id=outcome.demand_id,
            explanation=outcome.no_match_explanation or "no eligible product",
            localized={"more": _more(outcome.hints)},
        ))
    for lead in outcome.leads:
        due = lead.contact_due_at.strftime("%Y-%m-%d %H:%M UTC") if lead.contact_due_at else f"{sla_days} days"
        notes.append(_compose(
            f"{LEAD_ISSUED}:{lead.lead_id}", RecipientKind.INSTITUTION, lead.institution_id, LEAD_ISSUED, at,
            demand_id=outcome.demand_id, lead_id=lead.lead_id,
            product_id=lead.product_id, score=lead.score, rank=lead.rank, contact_due=due,
        ))
    return notes


def validate_query(recipient_kind: int, recipient_id: str) -> None:
    """Raise ValidationFailed naming every missing or wrong field of an inbox query."""
    v = Violations()
    if recipient_kind not in (RecipientKind.ENTERPRISE, RecipientKind.INSTITUTION):
        v.add("recipient_kind", "is required: RECIPIENT_KIND_ENTERPRISE or RECIPIENT_KIND_INSTITUTION")
    v.check(bool(recipient_id.strip()), "recipient_id", "is required: a USCC or an institution id")
    v.raise_if_any()


# -- more notification kinds ---------------------------------------------------------------------------

ORIGIN_LABELS: dict[str, tuple[str, str]] = {
    "SLA_REROUTE": ("an institution did not contact you in time", "原机构未按时联系您"),
    "REMATCH_AFTER_DECLINE": ("after a decline", "原机构已拒绝"),
    "INSTITUTION_CLAIMED": ("an institution asked for it", "金融机构主动对接"),
    "INTELLIGENT_MATCH": ("new products fit", "有新产品符合条件"),
    "ROADSHOW": ("an investor's intent at a roadshow", "路演投资意向"),
}
STATUS_LABELS: dict[str, tuple[str, str]] = {
    "NEEDS_INFO": ("needs more information", "需补充信息"),
    "WITHDRAWN": ("withdrawn", "已撤回"),
    "EXPIRED": ("expired", "已过期"),
    "FUNDED": ("funded", "已获得融资"),
    "ALL_DECLINED": ("declined by every institution so far", "已被所有机构拒绝"),
    "CLOSED": ("closed", "已关闭"),
    "CONTACTED": ("contacted you", "已与您联系"),
    "UNDER_REVIEW": ("your application is under review", "正在审批"),
    "APPROVED": ("approved", "已批准"),
    "DISBURSED": ("disbursed", "已放款"),
    "DECLINED": ("declined", "已拒绝"),
    "SLA_BREACHED": ("did not contact you in time", "未按时联系您"),  # the reason says whether the demand goes on
}
CHANNEL_LABELS: dict[str, tuple[str, str]] = {
    "ONLINE_PORTAL": ("online portal", "线上门户"), "OFFLINE_WINDOW": ("service window", "线下服务窗口"),
    "API": ("API", "接口"), "ROADSHOW": ("roadshow", "路演"), "CORE_ENTERPRISE": ("core enterprise", "核心企业"),
}
# Demand status changes the enterprise is told about (matching and leads have their own notices).
DEMAND_STATUSES_NOTIFIED = frozenset({"NEEDS_INFO", "WITHDRAWN", "EXPIRED", "FUNDED", "ALL_DECLINED"})
# Lead status changes the enterprise is told about.
LEAD_STATUSES_NOTIFIED = frozenset({"CONTACTED", "UNDER_REVIEW", "APPROVED", "DISBURSED", "DECLINED", "SLA_BREACHED"})


def _label(table: dict[str, tuple[str, str]], name: str) -> tuple[str, str]:
    return table.get(name, (name.lower().replace("_", " "), name))


@dataclass(frozen=True)
class DemandChange:
    """One status change of a demand (``DemandStatusChanged``)."""

    demand_id: str
    enterprise_uscc: str
    status: str  # e.g. "SUBMITTED"
    seq: int
    reason: str
    channel: str
    at: datetime


def for_demand_change(c: DemandChange) -> list[Notification]:
    """The enterprise's notice for a demand status change it cares about (received, needs info,
    withdrawn, expired, funded, all declined); nothing for the rest."""
    if not c.enterprise_uscc:
        return []
    fact = f"demand.status:{c.demand_id}:{c.seq}"
    if c.status == "SUBMITTED" and c.seq == 1:
        return [_compose(fact, RecipientKind.ENTERPRISE, c.enterprise_uscc, DEMAND_RECEIVED, c.at,
                         demand_id=c.demand_id, localized={"channel": _label(CHANNEL_LABELS, c.channel)})]
    if c.status in DEMAND_STATUSES_NOTIFIED:
        return [_compose(fact, RecipientKind.ENTERPRISE, c.enterprise_uscc, DEMAND_STATUS, c.at,
                         demand_id=c.demand_id, localized={"status": _label(STATUS_LABELS, c.status),
                                                           "reason": (c.reason or "-", c.reason or "-")})]
    return []


@dataclass(frozen=True)
class LeadChange:
    """One status change of a lead (``LeadStatusChanged``)."""

    lead_id: str
    demand_id: str
    institution_id: str
    product_id: str
    status: str  # e.g. "DELIVERED"
    seq: int
    reason: str
    at: datetime
    origin: str = ""
    contacted_at: datetime | None = None
    enterprise_uscc: str = ""  # empty in events published before the field existed


def lead_change_problems(c: LeadChange) -> list[str]:
    return [f"{name} is empty" for name in ("lead_id", "demand_id", "institution_id", "status")
            if not getattr(c, name)]


def for_lead_change(c: LeadChange, enterprise_uscc: str) -> list[Notification]:
    """The enterprise hears of each outcome of its leads; the institution of a lead withdrawn."""
    fact = f"lead.status:{c.lead_id}:{c.seq}"
    fields = dict(demand_id=c.demand_id, lead_id=c.lead_id, institution_id=c.institution_id,
                  product_id=c.product_id)
    notes = []
    if c.status in LEAD_STATUSES_NOTIFIED and enterprise_uscc:
        notes.append(_compose(fact, RecipientKind.ENTERPRISE, enterprise_uscc, LEAD_OUTCOME, c.at, **fields,
                              localized={"status": _label(STATUS_LABELS, c.status),
                                         "reason": (c.reason or "-", c.reason or "-")}))
    if c.status == "WITHDRAWN":
        notes.append(_compose(fact, RecipientKind.INSTITUTION, c.institution_id, LEAD_WITHDRAWN, c.at, **fields,
                              reason=c.reason or "-"))
    return notes


NOTICE_LABELS: dict[str, tuple[str, str]] = {
    "INVITED": ("you are invited", "诚邀您参加"),
    "APPLICATION_RECEIVED": ("your application was received", "您的报名已收到"),
    "APPLICATION_REFUSED": ("your application was not accepted", "您的报名未通过"),
    "SELECTED": ("you were selected to present", "您已入选路演"),
    "NOT_SELECTED": ("you were not selected this time", "您本次未入选"),
    "INVESTOR_REGISTERED": ("your registration as an investor is confirmed", "投资机构报名已确认"),
    "INTENT_RECORDED": ("an investment intent was recorded", "投资意向已登记"),
}


@dataclass(frozen=True)
class RoadshowNotice:
    notice_id: str
    roadshow_id: str
    kind: str  # e.g. "INVITED"
    recipient_kind: RecipientKind
    recipient_id: str
    title: str
    city: str
    held_at: datetime | None
    reason: str
    issued_at: datetime


def notice_problems(n: RoadshowNotice) -> list[str]:
    out = [f"{name} is empty" for name in ("notice_id", "roadshow_id", "recipient_id") if not getattr(n, name)]
    if n.recipient_kind not in (RecipientKind.ENTERPRISE, RecipientKind.INSTITUTION):
        out.append("recipient_kind is unspecified")
    if n.kind not in NOTICE_LABELS:
        out.append(f"kind {n.kind or 'UNSPECIFIED'} is not a notice kind")
    return out


def for_notice(n: RoadshowNotice) -> Notification:
    return _compose(f"roadshow:{n.notice_id}", n.recipient_kind, n.recipient_id, ROADSHOW_NOTICE, n.issued_at,
                    roadshow_title=n.title or n.roadshow_id, city=n.city or "-",
                    held_at=n.held_at.strftime("%Y-%m-%d") if n.held_at else "-",
                    localized={"notice": NOTICE_LABELS[n.kind], "reason": (n.reason, n.reason)})


# -- receivables --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivableChange:
    """What the notifier needs of one ``ReceivableChanged``."""

    receivable_id: str
    version: int
    change: str  # the ChangeKind's name without its prefix, e.g. "FINANCED" (or REGISTERED_BY_DEBTOR)
    document_number: str
    amount_fen: int
    supplier_uscc: str
    debtor_uscc: str
    due_date: str
    current_payee: str
    financier: str  # the institution it was applied to or financed by ("" if none)
    reason: str  # the last change's reason (a dispute's, a decline's)
    days_to_due: int
    at: datetime


# change -> (the notice in English and Chinese, who is told: supplier, debtor, financier)
RECEIVABLE_NOTICES: dict[str, tuple[tuple[str, str], tuple[str, ...]]] = {
    "UPLOADED": (("please confirm or dispute it", "请确认或提出异议"), ("debtor",)),
    # uploaded by the debtor itself (confirmed at once): the supplier is told
    "REGISTERED_BY_DEBTOR": (("registered and confirmed by the debtor", "债务人已登记并确认"), ("supplier",)),
    "BLOCKED_DUPLICATE": (("blocked: the same receivable is registered already", "已拦截：该应收账款已登记"),
                          ("supplier",)),
    "CONFIRMED": (("confirmed by the debtor", "债务人已确认"), ("supplier",)),
    "DISPUTED": (("disputed by the debtor", "债务人提出异议"), ("supplier",)),
    "FINANCING_REQUESTED": (("financing applied for", "已申请融资"), ("financier",)),
    "FINANCED": (("financed: pay the new payee", "已融资：请向新收款人付款"), ("supplier", "debtor", "financier")),
    "FINANCING_DECLINED": (("financing declined", "融资申请被拒绝"), ("supplier",)),
    # declined by the maturity pass, not by the financier: the application lapsed at the due date
    "FINANCING_LAPSED": (("the financing application lapsed at the due date", "融资申请已于到期日失效"),
                         ("supplier", "financier")),
    "FINANCING_WITHDRAWN": (("the supplier withdrew its financing application", "供应商已撤回融资申请"),
                            ("financier",)),
    "PAYMENT_DUE": (("payment due", "付款提醒"), ("debtor",)),
    "OVERDUE": (("overdue: not reported paid", "已逾期：尚未付款"), ("debtor", "financier")),
    "SETTLED": (("paid", "已结清"), ("supplier", "debtor", "financier")),
}


def receivable_problems(c: ReceivableChange) -> list[str]:
    out = [f"{name} is empty" for name in ("receivable_id", "supplier_uscc", "debtor_uscc") if not getattr(c, name)]
    if c.change not in RECEIVABLE_NOTICES:
        out.append(f"change {c.change or 'UNSPECIFIED'} is not a receivable change")
    return out


def for_receivable(c: ReceivableChange) -> list[Notification]:
    """The notices of a receivable's change: the debtor is asked to confirm, prompted to pay (and told
    whom: the financier once it is financed), the supplier hears of confirmation, disputes,
    duplicates and financing, the financier of applications, defaults and payment."""
    (notice_en, notice_zh), told = RECEIVABLE_NOTICES[c.change]
    if c.change == "PAYMENT_DUE":
        when = ("today", "今天") if c.days_to_due == 0 else (f"in {c.days_to_due} day(s)", f"{c.days_to_due} 天后")
        detail = (f"Due {when[0]}: pay {c.current_payee}.", f"{when[1]}到期：请向 {c.current_payee} 付款。")
    elif c.change in ("FINANCED", "OVERDUE"):
        detail = (f"The payee is {c.current_payee}.", f"收款人为 {c.current_payee}。")
    else:
        detail = (c.reason, c.reason)
    who = {"supplier": (RecipientKind.ENTERPRISE, c.supplier_uscc), "debtor": (RecipientKind.ENTERPRISE, c.debtor_uscc),
           "financier": (RecipientKind.INSTITUTION, c.financier)}
    return [_compose(f"receivable:{c.receivable_id}:{c.version}:{c.change}", kind, recipient, RECEIVABLE_NOTICE,
                     c.at, document_number=c.document_number, amount_yuan=f"{c.amount_fen // 100:,}",
                     supplier_uscc=c.supplier_uscc, debtor_uscc=c.debtor_uscc, due_date=c.due_date,
                     localized={"notice": (notice_en, notice_zh), "detail": detail})
            for kind, recipient in (who[party] for party in told) if recipient]


# -- loans maturing --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenewalDue:
    """A disbursed loan maturing soon (``LoanRenewalDue``)."""

    lead_id: str
    enterprise_uscc: str
    institution_id: str
    amount_fen: int
    rate_bps: int
    term_months: int
    matures_on: str
    days: int
    first_loan: bool
    at: datetime


RENEWAL_ADVICE = {
    RecipientKind.ENTERPRISE: ("Talk to your lender about renewing it in time: a renewal need filed on the platform "
                               "is matched with renewal products.",
                               "请及时与贷款机构沟通续贷：在平台提交续贷需求即可匹配续贷产品。"),
    RecipientKind.INSTITUTION: ("Contact the enterprise about a renewal before it matures.",
                                "请在到期前联系企业办理续贷。"),
}


def renewal_problems(r: RenewalDue) -> list[str]:
    return [f"{name} is empty" for name in ("lead_id", "enterprise_uscc", "institution_id", "matures_on")
            if not getattr(r, name)]


def for_renewal(r: RenewalDue) -> list[Notification]:
    """The enterprise and its lender, told the loan matures soon and what to do about it."""
    return [_compose(f"loan-renewal:{r.lead_id}", kind, recipient, LOAN_RENEWAL_DUE, r.at, lead_id=r.lead_id,
                     amount_yuan=f"{r.amount_fen // 100:,}", institution_id=r.institution_id,
                     enterprise_uscc=r.enterprise_uscc, term_months=r.term_months, rate_bps=r.rate_bps,
                     matures_on=r.matures_on, days=r.days, localized={"advice": RENEWAL_ADVICE[kind]})
            for kind, recipient in ((RecipientKind.ENTERPRISE, r.enterprise_uscc),
                                    (RecipientKind.INSTITUTION, r.institution_id))]


# -- the contact clock ----------------------------------------------------------------------------------

MAX_CONTACT_CHARS = 200
# The lead statuses that stop a running clock: the institution acted, or the lead is gone.
CLOCK_STOPPERS = frozenset({"CONTACTED", "UNDER_REVIEW", "APPROVED", "DISBURSED", "DECLINED", "WITHDRAWN", "EXPIRED"})
CLOCK_STARTER = "DELIVERED"


@dataclass(frozen=True)
class Policy:
    """A contact policy set through ``SetContactPolicy`` (``product_id`` "" = the institution's)."""

    institution_id: str
    product_id: str = ""
    sla_hours: int = 0  # 0 = not set here
    escalation_contact: str = ""
    updated_at: datetime | None = None


def validate_policy(p: Policy, prefix: str = "policy") -> None:
    v = Violations()
    v.check(bool(p.institution_id.strip()), f"{prefix}.institution_id", "is required")
    v.check(len(p.institution_id) <= 63, f"{prefix}.institution_id", "must be at most 63 characters")
    v.check(len(p.product_id) <= 128, f"{prefix}.product_id", "must be at most 128 characters")
    v.check(0 <= p.sla_hours <= MAX_CONTACT_SLA_HOURS, f"{prefix}.sla_hours",
            f"must be between 1 and {MAX_CONTACT_SLA_HOURS} hours "
            f"(0 = the institution's, else {DEFAULT_CONTACT_SLA_HOURS})")
    v.check(len(p.escalation_contact) <= MAX_CONTACT_CHARS, f"{prefix}.escalation_contact",
            f"must be at most {MAX_CONTACT_CHARS} characters")
    v.check(p.sla_hours > 0 or bool(p.escalation_contact.strip()), f"{prefix}.sla_hours",
            "set sla_hours or escalation_contact (or both)")
    v.raise_if_any()


def resolve_sla(product: Policy | None, institution: Policy | None, institution_sla_hours: int = 0
                ) -> tuple[int, str, str]:
    """(hours, where they come from, escalation contact): :func:`meshkit.contact_sla.contact_sla`. The
    contact comes from the most specific policy that names one."""
    contact = next((p.escalation_contact for p in (product, institution) if p and p.escalation_contact), "")
    hours, source = contact_sla(product.sla_hours if product else 0, institution.sla_hours if institution else 0,
                                institution_sla_hours)
    return hours, source, contact


@dataclass(frozen=True)
class LeadClock:
    lead_id: str
    demand_id: str
    institution_id: str
    product_id: str
    sla_hours: int
    sla_source: str
    escalation_contact: str
    delivered_at: datetime
    remind_at: datetime
    due_at: datetime
    state: str = "running"  # running, stopped, breached
    next_fire_at: datetime | None = None
    reminded_at: datetime | None = None
    breached_at: datetime | None = None
    stopped_at: datetime | None = None
    stopped_by: str = ""
    contacted_at: datetime | None = None


def start_clock(c: LeadChange, sla_hours: int, sla_source: str, escalation_contact: str) -> LeadClock:
    """The clock of a lead delivered at ``c.at``: reminder at two-thirds of the SLA, due at its end."""
    sla = timedelta(hours=sla_hours)
    remind_at = c.at + sla * 2 / 3
    return LeadClock(lead_id=c.lead_id, demand_id=c.demand_id, institution_id=c.institution_id,
                     product_id=c.product_id, sla_hours=sla_hours, sla_source=sla_source,
                     escalation_contact=escalation_contact, delivered_at=c.at, remind_at=remind_at,
                     due_at=c.at + sla, next_fire_at=remind_at)


@dataclass(frozen=True)
class Tick:
    """What a running clock does at ``now``."""

    remind: bool
    breach: bool
    next_fire_at: datetime | None


def tick(clock: LeadClock, now: datetime) -> Tick:
    """At the deadline: breach (a notifier that was down past the deadline breaches without a
    pointless late reminder). Between two-thirds and the deadline: remind once."""
    if clock.state != "running":
        return Tick(False, False, None)
    if now >= clock.due_at:
        return Tick(False, True, None)
    if now >= clock.remind_at and clock.reminded_at is None:
        return Tick(True, False, clock.due_at)
    return Tick(False, False, clock.remind_at if clock.reminded_at is None else clock.due_at)


def _due_text(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def for_reminder(clock: LeadClock, at: datetime) -> Notification:
    return _compose(f"{LEAD_REMINDER}:{clock.lead_id}", RecipientKind.INSTITUTION, clock.institution_id,
                    LEAD_REMINDER, at, demand_id=clock.demand_id, lead_id=clock.lead_id,
                    product_id=clock.product_id, sla_hours=clock.sla_hours, due=_due_text(clock.due_at))


def for_escalation(clock: LeadClock, at: datetime) -> Notification:
    contact = clock.escalation_contact
    return _compose(f"{LEAD_ESCALATED}:{clock.lead_id}", RecipientKind.INSTITUTION, clock.institution_id,
                    LEAD_ESCALATED, at, demand_id=clock.demand_id, lead_id=clock.lead_id,
                    product_id=clock.product_id, sla_hours=clock.sla_hours, due=_due_text(clock.due_at),
                    localized={"contact": (contact or "the institution's lead desk", contact or "机构线索负责人")})


# -- webhooks ---------------------------------------------------------------------------------------------

SIGNATURE_VERSION = "v1"
REPLAY_TOLERANCE_SECONDS = 300
MAX_URL_CHARS = 2000


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits base·2^(n-1), capped, times 0.5–1.0. The
    default: 2 s doubling to 30 min, 18 attempts — the last one between about 2 and 4 hours after
    the first (:meth:`span`), so an endpoint that is down for an hour or two misses nothing."""

    max_attempts: int = 18
    base_seconds: float = 2.0
    cap_seconds: float = 1800.0
    timeout_seconds: float = 5.0

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1 = first); ``rand`` in [0, 1)."""
        raw = min(self.cap_seconds, self.base_seconds * 2 ** (attempt - 1))
        return raw * (0.5 + rand / 2)

    def span(self, rand: float) -> float:
        """Seconds from the first attempt to the last (waits only), every jitter draw ``rand``."""
        return sum(self.delay(n, rand) for n in range(1, self.max_attempts))


def webhook_id(institution_id: str, url: str) -> str:
    return stable_id("webhook", institution_id, url)


def delivery_id(notification_id: str, webhook_id_: str) -> str:
    return stable_id("delivery", notification_id, webhook_id_)


def validate_webhook(institution_id: str, url: str) -> None:
    v = Violations()
    v.check(bool(institution_id.strip()) and len(institution_id) <= 63, "institution_id",
            "is required, at most 63 characters")
    ok = url.startswith(("http://", "https://")) and len(url) <= MAX_URL_CHARS and " " not in url
    v.check(ok, "url", f"must be an http:// or https:// URL of at most {MAX_URL_CHARS} characters")
    v.raise_if_any()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Finmesh-Signature`` value for ``body`` signed at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={mac}"


def verify(secret: str, body: bytes, timestamp: str, signature: str, now: float,
           tolerance: int = REPLAY_TOLERANCE_SECONDS) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent (no replay)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, ts), signature)


def delivery_body(note: Notification, delivery_id_: str) -> bytes:
    """The JSON posted to a webhook (stable: the same bytes on every attempt)."""
    return json.dumps({
        "delivery_id": delivery_id_, "notification_id": note.notification_id, "kind": note.kind,
        "institution_id": note.recipient_id, "demand_id": note.demand_id, "lead_id": note.lead_id,
        "title": note.title, "body": note.body, "title_zh": note.title_zh, "body_zh": note.body_zh,
        "created_at": note.created_at.isoformat(),
    }, ensure_ascii=False, sort_keys=True).encode()
