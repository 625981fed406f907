"""Month shards (`YYYY-MM`), the unit of work of every pipeline stage."""
from __future__ import annotations

import re
from pathlib import Path

from model import cli

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_NEW_ID = re.compile(r"^(\d{2})(\d{2})\.\d{4,5}$")
# old-style ids (before 2007-04): archive, optional subject class, then YYMMNNN: cs/0112017, math.AG/0101001
_OLD_ID = re.compile(r"^[a-z-]+(?:\.[A-Za-z-]{2,})?/(\d{2})(\d{2})\d{3}$")


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
    """The month shard of an arXiv id: new-style (YYMM.NNNNN, with or without version) or
    old-style (cs/0112017: arXiv began in 1991, so YY of 91-99 is 19YY)."""
    base = re.sub(r"v\d+$", "", arxiv_id)
    if m := _NEW_ID.match(base):
        return f"20{m.group(1)}-{m.group(2)}"
    if m := _OLD_ID.match(base):
        return f"{'19' if int(m.group(1)) >= 91 else '20'}{m.group(1)}-{m.group(2)}"
    raise ValueError(f"not an arXiv id: {arxiv_id!r}")


def check_shard_files(shards, folder: Path, stage: str) -> None:
    """ValueError, for a CLI's one error line, unless every shard is a month with a
    `<folder>/<shard>.parquet` (`stage`: the command that writes them, named in the message)."""
    for shard in shards or ():
        parse_month(shard)
        if not (Path(folder) / f"{shard}.parquet").is_file():
            raise ValueError(f"no {Path(folder).name}/{shard}.parquet under {Path(folder).parent} "
                             f"(run python -m {stage})")


def add_selection_args(ap) -> None:
    """The paper-selection flags that crawl and bulk share: months, data root, category."""
    ap.add_argument("--from", dest="start", required=True, help="first month shard, YYYY-MM")
    ap.add_argument("--to", dest="end", required=True, help="last month shard, YYYY-MM (inclusive)")
    ap.add_argument("--root", "--data", dest="data", metavar="ROOT", type=cli.writable_dir,
                    help="dataset root (default $CVF_DATA or ./data)")
    ap.add_argument("--category", default="cs.CV", help="arXiv category (default cs.CV)")
    ap.add_argument("--include-cross-lists", action="store_true",
                    help="also take papers that list the category without it being their primary one")
