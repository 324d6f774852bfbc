"""Notification texts, by kind and language. Placeholders are ``str.format`` fields.

Every kind has an English (``en``) and a Chinese (``zh``) text; both are stored with the
notification, and the API returns the one the caller asks for.
"""

from __future__ import annotations

LANGUAGES = ("en", "zh")

# (kind, language) -> (title, body)
TEMPLATES: dict[tuple[str, str], tuple[str, str]] = {
    ("demand.matched", "en"): (
        "Your financing demand was matched",
        "Your demand {demand_id} was matched with {leads} financial product(s). "
        "The institutions will contact you within {sla_days} days.",
    ),
    ("demand.matched", "zh"): (
        "您的融资需求已匹配成功",
        "您的融资需求 {demand_id} 已匹配到 {leads} 款金融产品，金融机构将在 {sla_days} 天内与您联系。",
    ),
    ("demand.no_match", "en"): (
        "No product fits your financing demand yet",
        "No product matched your demand {demand_id}: {explanation}.{more}",
    ),
    ("demand.no_match", "zh"): (
        "暂未匹配到合适的金融产品",
        "您的融资需求 {demand_id} 暂未匹配到金融产品：{explanation}。{more}",
    ),
    ("lead.issued", "en"): (
        "New lead for product {product_id}",
        "Demand {demand_id} was matched with your product {product_id} (score {score}, rank {rank}). "
        "Please contact the enterprise by {contact_due}.",
    ),
    ("lead.issued", "zh"): (
        "新的融资线索：产品 {product_id}",
        "融资需求 {demand_id} 匹配到贵机构产品 {product_id}（评分 {score}，排名 {rank}），"
        "请于 {contact_due} 前联系企业。",
    ),
    ("demand.rematched", "en"): (
        "More institutions are looking at your demand",
        "Your demand {demand_id} was passed on to {leads} more financial product(s) ({reason}). "
        "They will contact you within {sla_days} days.",
    ),
    ("demand.rematched", "zh"): (
        "您的融资需求已推送给更多金融机构",
        "您的融资需求 {demand_id} 已推送给另外 {leads} 款金融产品（{reason}），金融机构将在 {sla_days} 天内与您联系。",
    ),
    ("demand.received", "en"): (
        "We received your financing demand",
        "Your demand {demand_id} was received ({channel}) and is being matched with financial products.",
    ),
    ("demand.received", "zh"): (
        "您的融资需求已受理",
        "您的融资需求 {demand_id} 已受理（{channel}），正在为您匹配金融产品。",
    ),
    ("demand.status", "en"): (
        "Your financing demand is now {status}",
        "Your demand {demand_id} is now {status}: {reason}",
    ),
    ("demand.status", "zh"): (
        "您的融资需求状态更新：{status}",
        "您的融资需求 {demand_id} 状态更新为 {status}：{reason}",
    ),
    ("lead.outcome", "en"): (
        "{institution_id}: {status}",
        "About your demand {demand_id}, {institution_id} (product {product_id}) reports {status}: {reason}",
    ),
    ("lead.outcome", "zh"): (
        "{institution_id}：{status}",
        "关于您的融资需求 {demand_id}，{institution_id}（产品 {product_id}）反馈 {status}：{reason}",
    ),
    ("lead.withdrawn", "en"): (
        "Lead {lead_id} was withdrawn",
        "The enterprise withdrew demand {demand_id}; lead {lead_id} (product {product_id}) is closed: {reason}",
    ),
    ("lead.withdrawn", "zh"): (
        "线索 {lead_id} 已撤回",
        "企业已撤回融资需求 {demand_id}，线索 {lead_id}（产品 {product_id}）已关闭：{reason}",
    ),
    ("lead.reminder", "en"): (
        "Reminder: contact the enterprise of lead {lead_id} by {due}",
        "Lead {lead_id} (demand {demand_id}, product {product_id}) has not been contacted yet; "
        "the {sla_hours}-hour contact deadline is {due}.",
    ),
    ("lead.reminder", "zh"): (
        "提醒：请于 {due} 前联系线索 {lead_id} 的企业",
        "线索 {lead_id}（融资需求 {demand_id}，产品 {product_id}）尚未联系企业，{sla_hours} 小时联系时限为 {due}。",
    ),
    ("lead.escalated", "en"): (
        "Escalation: lead {lead_id} missed its contact deadline",
        "Lead {lead_id} (demand {demand_id}, product {product_id}) was not contacted within {sla_hours} hours "
        "(due {due}). Escalated to {contact}; with the enterprise's consent, the demand goes on to the next-best "
        "institution.",
    ),
    ("lead.escalated", "zh"): (
        "升级：线索 {lead_id} 已超过联系时限",
        "线索 {lead_id}（融资需求 {demand_id}，产品 {product_id}）未在 {sla_hours} 小时内联系企业（时限 {due}），"
        "已升级至 {contact}；经企业同意，该需求将转给下一家金融机构。",
    ),
    ("receivable.notice", "en"): (
        "Receivable {document_number}: {notice}",
        "{notice} — receivable {document_number} of {amount_yuan} yuan, {supplier_uscc} on {debtor_uscc}, "
        "due {due_date}. {detail}",
    ),
    ("receivable.notice", "zh"): (
        "应收账款 {document_number}：{notice}",
        "{notice}——应收账款 {document_number}，金额 {amount_yuan} 元，债权人 {supplier_uscc}，债务人 {debtor_uscc}，"
        "到期日 {due_date}。{detail}",
    ),
    ("loan.renewal_due", "en"): (
        "A loan matures on {matures_on}",
        "The loan of {amount_yuan} yuan from {institution_id} to {enterprise_uscc} ({term_months} months, "
        "{rate_bps} bps) matures on {matures_on}, in {days} day(s). {advice}",
    ),
    ("loan.renewal_due", "zh"): (
        "贷款将于 {matures_on} 到期",
        "{institution_id} 向 {enterprise_uscc} 发放的 {amount_yuan} 元贷款"
        "（期限 {term_months} 个月，利率 {rate_bps} 个基点）将于 {matures_on} 到期，还有 {days} 天。{advice}",
    ),
    ("roadshow.notice", "en"): (
        "Roadshow {roadshow_title}: {notice}",
        "{notice} — roadshow {roadshow_title} in {city}, {held_at}. {reason}",
    ),
    ("roadshow.notice", "zh"): (
        "路演 {roadshow_title}：{notice}",
        "{notice}——{city} {held_at} 路演 {roadshow_title}。{reason}",
    ),
}

KINDS = tuple(sorted({kind for kind, _ in TEMPLATES}))


def render(kind: str, language: str, **fields: object) -> tuple[str, str]:
    """The (title, body) of ``kind`` in ``language``; KeyError if there is no such template."""
    title, body = TEMPLATES[(kind, language)]
    return title.format(**fields), body.format(**fields)
