"""Builders shared by the matcher's unit tests."""

from __future__ import annotations

from services.matcher.domain import Product

YUAN = 100


def product(pid: str, inst: str = "bank-a", **kw: object) -> Product:
    fields: dict[str, object] = dict(
        product_id=pid, institution_id=inst, name=f"Loan {pid}", product_type="LOAN", loan_category="CREDIT",
        amount_min_fen=100_000 * YUAN, amount_max_fen=10_000_000 * YUAN, term_min_months=6, term_max_months=60,
        rate_min_bps=350, rate_max_bps=450, status="ACTIVE", version=1,
    )
    fields.update(kw)
    return Product(**fields)  # type: ignore[arg-type]
