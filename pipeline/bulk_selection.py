"""The bulk route's choices, before any download: which papers (arXiv metadata: Kaggle's
snapshot or the OAI-PMH harvest table), which of the bucket's source tars can hold them (its
manifest `src/arXiv_src_manifest.xml`), what fetching them costs (`plan`), and the selection
file that hands each tar its papers (`bulk/selection-<hash>.parquet`). `pipeline.bulk` runs it.
"""
from __future__ import annotations

import bisect
import email.utils
import functools
import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from lxml import etree

from pipeline import store
from pipeline.arxiv_api import strict_xml
from pipeline.contract import TAR_SELECTION_SCHEMA
from pipeline.shards import month_range, shard_of_id


class BulkError(Exception):
    """Bad input or an unusable bucket: one line a person can act on."""


# --- ids and manifest items --------------------------------------------------------------------

_NEW_ITEM = re.compile(r"^(\d{4})\.(\d{4,5})$")   # 0704.0001 .. 1412.9999, then 1501.00001 ..
_OLD_ITEM = re.compile(r"^([a-z-]+)(\d{7})$")     # cs0112017: archive and number, as in old tars
_OLD_ID = re.compile(r"^([a-z-]+)(?:\.[A-Za-z-]+)?/(\d{7})$")


def item_name(arxiv_id: str) -> str:
    """How the bucket names a paper: `1501.00001` as is, old-style `cs/0112017` as `cs0112017`."""
    if m := _OLD_ID.match(arxiv_id):
        return m.group(1) + m.group(2)
    return arxiv_id


@functools.lru_cache(maxsize=1 << 18)  # every tar's range is compared with every paper of its month
def item_key(item: str) -> tuple:
    """A sort key for manifest items: new-style by (yymm, number), numbers 4 digits long up to 1412
    and 5 from 1501 (anything else is no id); old-style by (archive, number), the order of the
    old tars' ranges."""
    if (m := _NEW_ITEM.match(item)) and len(m.group(2)) == (5 if m.group(1) >= "1501" else 4):
        return (1, m.group(1), int(m.group(2)))
    if m := _OLD_ITEM.match(item):
        return (0, m.group(1), int(m.group(2)))
    raise ValueError(f"not an arXiv item name: {item!r}")


def yymm_month(yymm: str) -> str:
    """`1501` -> `2015-01`; `9108` -> `1991-08` (arXiv began in 1991)."""
    return f"{'19' if int(yymm[:2]) >= 91 else '20'}{yymm[:2]}-{yymm[2:]}"


@dataclass(frozen=True)
class SourceTar:
    """One `<file>` of the manifest."""
    filename: str      # src/arXiv_src_1501_001.tar: the object key
    yymm: str
    seq_num: int
    first_item: str
    last_item: str
    num_items: int
    size: int
    md5sum: str
    timestamp: str     # when arXiv made the tar (UTC, "2015-02-03 04:05:06")

    @property
    def name(self) -> str:
        return PurePosixPath(self.filename).stem

    @property
    def month(self) -> str:
        return yymm_month(self.yymm)

    def can_hold(self, item: str) -> bool:
        try:
            return item_key(self.first_item) <= item_key(item) <= item_key(self.last_item)
        except ValueError:
            return False

    def made_at(self) -> datetime | None:
        try:
            return datetime.strptime(self.timestamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        except ValueError:
            return None


_MANIFEST_FIELDS = ("filename", "yymm", "seq_num", "first_item", "last_item", "num_items", "size", "md5sum",
                    "timestamp")


def parse_manifest(data: bytes) -> list[SourceTar]:
    """The tars of `arXiv_src_manifest.xml` (root `arXivSRC`, one `<file>` per tar)."""
    try:
        root = strict_xml(data)
    except etree.XMLSyntaxError as e:
        raise BulkError(f"the manifest is not XML: {e}") from None
    if root.tag != "arXivSRC":
        raise BulkError(f"not an arXiv source manifest: root element <{root.tag}>, expected <arXivSRC>")
    tars = []
    for i, el in enumerate(root.iterfind("file"), 1):
        values = {f: (el.findtext(f) or "").strip() for f in _MANIFEST_FIELDS}
        if missing := [f for f in _MANIFEST_FIELDS if f != "timestamp" and not values[f]]:
            raise BulkError(f"manifest <file> #{i} lacks {', '.join(missing)}")
        try:
            tars.append(SourceTar(**dict(values, seq_num=int(values["seq_num"]), num_items=int(values["num_items"]),
                                         size=int(values["size"]), md5sum=values["md5sum"].lower())))
        except ValueError as e:
            raise BulkError(f"manifest <file> #{i} ({values['filename']}): {e}") from None
    return tars


# --- metadata: which papers are wanted -----------------------------------------------------------

@dataclass
class Paper:
    record: dict                           # the contract's metadata columns (contract.PAPER_SCHEMA)
    versions: list[tuple[int, datetime]]   # (number, created); empty when the metadata has none
    month: str
    item: str

    def version_at(self, when: datetime | None) -> int | None:
        """The newest version created by `when` (what a tar made then holds); the newest without one."""
        known = [n for n, created in self.versions if when is None or created <= when] or \
                [n for n, _ in self.versions[:1]]
        return known[-1] if known else None


def _utc(text: str) -> datetime | None:
    """A snapshot date ('Mon, 2 Apr 2007 19:18:42 GMT') or an OAI one ('2007-04-02') as UTC."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _text(value) -> str:
    return " ".join(str(value or "").split())


def _authors(entry: dict) -> list[str]:
    if parsed := entry.get("authors_parsed"):  # [[last, first, suffix], ...]
        return [_text(" ".join([*(p[1:2]), p[0], *(p[2:3])])) for p in parsed if p]
    names = re.split(r",\s*|\s+and\s+", _text(entry.get("authors")))
    return [n for n in names if n]


def paper_from_snapshot(entry: dict) -> Paper:
    """A snapshot line (JSON object) as a Paper; raises ValueError when it lacks an id or categories."""
    arxiv_id, categories = _text(entry.get("id")), _text(entry.get("categories")).split()
    if not arxiv_id or not categories:
        raise ValueError("no id or no categories")
    versions = []
    for v in entry.get("versions") or []:
        number, created = str(v.get("version", "")).lstrip("v"), _utc(v.get("created", ""))
        if number.isdigit() and created is not None:
            versions.append((int(number), created))
    versions.sort()
    record = {
        "arxiv_id": arxiv_id, "version": versions[-1][0] if versions else None,
        "title": _text(entry.get("title")), "authors": _authors(entry), "summary": _text(entry.get("abstract")),
        "published": versions[0][1] if versions else None,
        "updated": versions[-1][1] if versions else _utc(entry.get("update_date", "")),
        "primary_category": categories[0], "categories": categories, "license": _text(entry.get("license")),
        "doi": _text(entry.get("doi")), "journal_ref": _text(entry.get("journal-ref")),
        "comment": _text(entry.get("comments")),
    }
    return Paper(record, versions, shard_of_id(arxiv_id), item_name(arxiv_id))


def paper_from_harvest(row: dict) -> Paper:
    """A row of `pipeline.licenses`' table as a Paper (OAI-PMH has no version numbers: version null)."""
    categories = (row.get("categories") or "").split()
    if not categories:
        raise ValueError("no categories (a table harvested before they were kept: harvest again)")
    record = {
        "arxiv_id": row["arxiv_id"], "version": None, "title": row.get("title") or "",
        "authors": list(row.get("authors") or []), "summary": row.get("abstract") or "",
        "published": _utc(row.get("created") or ""), "updated": _utc(row.get("updated") or row.get("created") or ""),
        "primary_category": categories[0], "categories": categories, "license": row.get("license") or "",
        "doi": row.get("doi") or "", "journal_ref": row.get("journal_ref") or "", "comment": row.get("comments") or "",
    }
    return Paper(record, [], shard_of_id(row["arxiv_id"]), item_name(row["arxiv_id"]))


def _snapshot_entries(path: Path, needle: str = "") -> Iterator[tuple[int, dict]]:
    """The JSON objects of a snapshot's lines that contain `needle`. Only those are parsed (a
    category's name is in every line that lists it, and most of the 4 GB snapshot lists others); the
    others must still look like one JSON object each, so a truncated or foreign file is refused."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8")) as lines:
        for number, line in enumerate(lines, 1):
            if not (text := line.strip()):
                continue
            if needle not in line:
                if not (text.startswith("{") and text.endswith("}")):
                    raise BulkError(f"{path} line {number}: not JSON (not one object per line)")
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise BulkError(f"{path} line {number}: not JSON ({e.msg})") from None
            if not isinstance(entry, dict):
                raise BulkError(f"{path} line {number}: a JSON {type(entry).__name__}, expected an object")
            yield number, entry


def read_metadata(path: str | os.PathLike, start: str, end: str, category: str = "cs.CV",
                  include_cross_lists: bool = False) -> dict[str, Paper]:
    """The wanted papers of a snapshot (JSON lines) or a harvest table (Parquet), by id.

    Streams the file (the 2024 snapshot is ~4 GB): only the wanted papers stay in memory."""
    path = Path(path)
    if not path.is_file():
        raise BulkError(f"no metadata file at {path}")
    months = set(month_range(start, end))

    def wanted(categories: list[str], arxiv_id: str) -> bool:
        in_category = categories[:1] == [category] or (include_cross_lists and category in categories)
        try:
            return in_category and shard_of_id(arxiv_id) in months
        except ValueError:
            return False

    papers: dict[str, Paper] = {}
    with open(path, "rb") as f:
        is_parquet = f.read(4) == b"PAR1"
    if is_parquet:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise BulkError(f"{path}: unreadable Parquet ({e})") from None
        if "categories" not in table.column_names:
            raise BulkError(f"{path}: no `categories` column (not a harvest of pipeline.licenses, or one "
                            "made before categories were kept: run python -m pipeline.licenses again)")
        rows = table.to_pylist()
        if lacking := sum(not row.get("categories") for row in rows):
            raise BulkError(f"{path}: {lacking} of {len(rows)} records have no categories (harvested before "
                            "they were kept): run python -m pipeline.licenses again")
        for row in rows:
            if wanted(row["categories"].split(), row["arxiv_id"]):
                papers[row["arxiv_id"]] = paper_from_harvest(row)
        return papers
    for number, entry in _snapshot_entries(path, category):
        if not wanted(_text(entry.get("categories")).split(), _text(entry.get("id"))):
            continue
        try:
            paper = paper_from_snapshot(entry)
        except ValueError as e:
            raise BulkError(f"{path} line {number}: {e}") from None
        papers[paper.record["arxiv_id"]] = paper
    return papers


# --- which tars -----------------------------------------------------------------------------

def _valid_key(item: str) -> tuple | None:
    try:
        return item_key(item)
    except ValueError:
        return None


def pick_tars(tars: Iterable[SourceTar], papers: Iterable[Paper]) -> dict[str, list[Paper]]:
    """{tar name: the wanted papers it can hold} for the tars that can hold any (manifest order).
    Each month's papers are sorted once and every tar's range is found by bisection."""
    by_month: dict[str, list[tuple[tuple, Paper]]] = {}
    for p in papers:
        if (key := _valid_key(p.item)) is not None:
            by_month.setdefault(p.month, []).append((key, p))
    for held in by_month.values():
        held.sort(key=lambda kp: kp[0])
    keys = {m: [k for k, _ in held] for m, held in by_month.items()}
    picked = {}
    for tar in tars:
        first, last = _valid_key(tar.first_item), _valid_key(tar.last_item)
        if tar.month not in by_month or first is None or last is None:
            continue
        lo, hi = bisect.bisect_left(keys[tar.month], first), bisect.bisect_right(keys[tar.month], last)
        if hi > lo:
            picked[tar.name] = [p for _, p in by_month[tar.month][lo:hi]]
    return picked


def bulk_dir(root: Path) -> Path:
    return Path(root) / "bulk"


def tar_done(root: Path, tar: SourceTar, papers: list[Paper]) -> dict | None:
    """The stats of `tar` when it is done and looked for every one of `papers`, else None."""
    stats = store.read_stats(bulk_dir(root), tar.name)
    if stats and stats.get("md5sum") == tar.md5sum and {p.record["arxiv_id"] for p in papers} <= set(stats["looked_for"]):
        return stats
    return None


# What fetching costs (us-east-1 prices) and takes.
USD_PER_GB_OUT_OF_AWS = 0.09   # S3 transfer to the internet, first 10 TB a month (us-east-1)
USD_PER_1000_GETS = 0.0004     # S3 Standard GET requests, paid by the requester in any case
DEFAULT_BANDWIDTH_MB_S = 10.0  # ~100 Mbit/s


def plan(tars: list[SourceTar], picked: dict[str, list[Paper]], root: Path,
         bandwidth_mb_s: float = DEFAULT_BANDWIDTH_MB_S) -> dict:
    """What a run will fetch: tars, bytes, money out of AWS and inside us-east-1, hours at `bandwidth_mb_s`."""
    chosen = [t for t in tars if t.name in picked]
    todo = [t for t in chosen if not tar_done(root, t, picked[t.name])]
    todo_bytes = sum(t.size for t in todo)
    return {
        "papers": len({p.record["arxiv_id"] for ps in picked.values() for p in ps}),
        "tars": len(chosen), "tars_done": len(chosen) - len(todo), "tars_to_fetch": len(todo),
        "bytes_total": sum(t.size for t in chosen), "bytes_to_fetch": todo_bytes,
        "usd_out_of_aws": round(todo_bytes / 1e9 * USD_PER_GB_OUT_OF_AWS, 2),
        # inside the region transfer is free: only the GETs (one per tar, plus the manifest)
        "usd_in_us_east_1": round((len(todo) + 1) / 1000 * USD_PER_1000_GETS, 4),
        "bandwidth_mb_s": bandwidth_mb_s,
        "hours": todo_bytes / (bandwidth_mb_s * 1e6) / 3600,
        # one tar on disk per worker at a time (deleted when done) besides what is kept
        "disk_peak_bytes_per_worker": max((t.size for t in todo), default=0),
    }


def format_plan(summary: dict, tars: list[SourceTar] | None = None, picked: dict | None = None,
                root: Path | None = None) -> str:
    lines = []
    for t in tars or []:
        held = len(picked[t.name])
        state = "done" if tar_done(root, t, picked[t.name]) else "fetch"
        lines.append(f"{state:5} {t.filename} {t.month} {t.size / 1e6:9.1f} MB  {held} wanted of {t.num_items}")
    s = summary
    lines.append(
        f"{s['papers']} papers in {s['tars']} tars ({s['bytes_total'] / 1e9:.2f} GB); to fetch: {s['tars_to_fetch']} tars, "
        f"{s['bytes_to_fetch'] / 1e9:.2f} GB ({s['tars_done']} done); cost out of AWS ~${s['usd_out_of_aws']:.2f} "
        f"(${USD_PER_GB_OUT_OF_AWS}/GB), inside us-east-1 ~${s['usd_in_us_east_1']:.4f} (GET requests only); "
        f"~{s['hours']:.1f} h at {s['bandwidth_mb_s']:g} MB/s; disk: up to {s['disk_peak_bytes_per_worker'] / 1e6:.0f} MB "
        "per worker for the tar being read, plus the kept e-prints")
    return "\n".join(lines)


# Only the e-print and its metadata come from the bucket: the record says so, so a rerun of the
# crawl over the same shard (other params) opens it again.
SOURCE = "s3"


# --- the selection file: the picked papers of each tar ------------------------------------------

def write_selection(root: Path, picked: dict[str, list[Paper]]) -> Path:
    """The picked papers of every tar (ids and version dates: all a tar's worker needs), as
    `bulk/selection-<hash>.parquet`: workers read their tar's part instead of every paper's metadata
    travelling through the flow's parameters. Named by its content, so concurrent runs never clash."""
    rows = sorted(({"tar": name, "arxiv_id": p.record["arxiv_id"], "version_numbers": [n for n, _ in p.versions],
                    "version_dates": [d for _, d in p.versions]} for name, ps in picked.items() for p in ps),
                  key=lambda r: (r["tar"], r["arxiv_id"]))
    digest = hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]
    path = bulk_dir(root) / f"selection-{digest}.parquet"
    if not path.exists():
        store.write_rows(path, rows, TAR_SELECTION_SCHEMA)
    return path


def read_selection(path: str | os.PathLike, tar_name: str) -> list[Paper]:
    """The papers `write_selection` stored for one tar (their id and versions; no other metadata)."""
    table = pq.read_table(path, filters=[("tar", "=", tar_name)])
    return [Paper({"arxiv_id": r["arxiv_id"]}, list(zip(r["version_numbers"], r["version_dates"])),
                  shard_of_id(r["arxiv_id"]), item_name(r["arxiv_id"])) for r in table.to_pylist()]


def selection_params(bucket: str, category: str, include_cross_lists: bool) -> dict:
    """What a month shard written by this stage was made with (its stats' `params`)."""
    return {"source": SOURCE, "bucket": bucket, "category": category, "include_cross_lists": include_cross_lists,
            "downloads": ["eprint"]}
