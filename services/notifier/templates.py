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
        "No product matched your demand {demand_id}: {explanation}",
    ),
    ("demand.no_match", "zh"): (
        "暂未匹配到合适的金融产品",
        "您的融资需求 {demand_id} 暂未匹配到金融产品：{explanation}",
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
}

KINDS = tuple(sorted({kind for kind, _ in TEMPLATES}))


def render(kind: str, language: str, **fields: object) -> tuple[str, str]:
    """The (title, body) of ``kind`` in ``language``; KeyError if there is no such template."""
    title, body = TEMPLATES[(kind, language)]
    return title.format(**fields), body.format(**fields)
