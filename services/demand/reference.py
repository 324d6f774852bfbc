"""Loads the reference data of the repository's ``reference/`` folder into a :class:`domain.Reference`.

Called once by the composition root (and by tests); nothing is read at import time.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from services.demand import domain as d

FOLDER = Path(__file__).resolve().parents[2] / "reference"


def _rows(folder: Path, name: str) -> list[dict[str, str]]:
    with (folder / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@lru_cache(maxsize=4)
def load(folder: Path = FOLDER) -> d.Reference:
    cities = {r["region_code"]: d.City(r["region_code"], r["name"], r["name_zh"])
              for r in _rows(folder, "pilot_cities.csv")}
    return d.Reference(
        key_industries=frozenset(int(r["code"]) for r in _rows(folder, "key_industries.csv")),
        special_zones=frozenset(r["code"] for r in _rows(folder, "special_zones.csv")),
        pilot_cities=cities,
        provinces=frozenset(r["code"] for r in _rows(folder, "provinces.csv")),
        sizes=frozenset(int(r["code"]) for r in _rows(folder, "enterprise_sizes.csv")),
        srdi_tiers=frozenset(int(r["code"]) for r in _rows(folder, "srdi_tiers.csv")),
    )
