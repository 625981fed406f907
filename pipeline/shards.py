"""Month shards (`YYYY-MM`), the unit of work of every pipeline stage."""
from __future__ import annotations

import re

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_NEW_ID = re.compile(r"^(\d{2})(\d{2})\.\d{4,5}$")


def parse_month(month: str) -> tuple[int, int]:
    m = _MONTH.match(month)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"not a month shard (YYYY-MM): {month!r}")
    return int(m.group(1)), int(m.group(2))


def month_range(start: str, end: str) -> list[str]:
    """Every month from `start` to `end` inclusive, e.g. month_range('2010-11', '2011-02')."""
    y, m = parse_month(start)
    ye, me = parse_month(end)
    if (y, m) > (ye, me):
        raise ValueError(f"start {start} is after end {end}")
    out = []
    while (y, m) <= (ye, me):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def shard_of_id(arxiv_id: str) -> str:
    """The month shard of a new-style arXiv id (YYMM.NNNNN, with or without version)."""
    base = arxiv_id.split("v")[0] if "v" in arxiv_id and "/" not in arxiv_id else arxiv_id
    m = _NEW_ID.match(base)
    if not m:
        raise ValueError(f"not a new-style arXiv id: {arxiv_id!r}")
    return f"20{m.group(1)}-{m.group(2)}"
