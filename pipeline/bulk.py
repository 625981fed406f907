"""arXiv's bulk source route: e-prints from the requester-pays S3 bucket `arxiv`, tar by tar.

arXiv asks bulk users to take full texts from its S3 bucket, not the API. The bucket holds
`src/arXiv_src_<yymm>_<nnn>.tar` (~500 MB each, grouped by month of submission, every category
mixed) listed in `src/arXiv_src_manifest.xml`. This stage picks the papers from metadata
(no API request), then the tars that can hold them, and keeps only their members:

    python -m pipeline.bulk --metadata arxiv-metadata-oai-snapshot.json --from 2010-01 --to 2022-12 --plan
    python -m pipeline.bulk --metadata arxiv-metadata-oai-snapshot.json --from 2010-01 --to 2022-12
    python -m pipeline.bulk --metadata data/licenses/cs.parquet --from 2021-01 --to 2021-01 \\
        --endpoint-url http://127.0.0.1:5000          # an S3 imitation (or set $AWS_ENDPOINT_URL)

Metadata: the arXiv metadata snapshot (Kaggle's arxiv-metadata-oai-snapshot.json, JSON lines,
optionally gzip'd) or the OAI-PMH harvest table of `python -m pipeline.licenses`
(`licenses/<set>.parquet`). Papers whose primary category is `--category` (default cs.CV; with
`--include-cross-lists` any listed category) and whose id's month is in range are wanted.

A tar is picked when its month is in range and its `first_item..last_item` can hold a wanted
id. Each is fetched with `RequestPayer=requester` through ranged GETs into
`bulk/tars/<tar>.tar.<md5>.part` (a killed download resumes where it stopped), checked against the
manifest's md5 (a mismatch is discarded and recorded in `bulk/<tar>_failed.json`; a rerun fetches
it again), then streamed: only the wanted papers' members (`<yymm>/<id>.gz`, a gzip'd tar or a
gzip'd single .tex, or `<yymm>/<id>.pdf`) are read, each capped in size, and stored as the crawl
stores e-prints: `raw/<shard>/<id>.eprint`, with `papers/<shard>.parquet` (the crawl's schema:
metadata, e-print status/sha256/kind/path; PDFs `skipped`), so `pipeline.extract` runs unchanged.
`bulk/<tar>.parquet` then `bulk/<tar>_stats.json` mark a tar done; a rerun never fetches a done
tar again (unless it must now look for papers it did not look for), and the tar file itself is
deleted once done (`--keep-tars` keeps it). A month's `papers/<shard>_stats.json` is written when
every tar that can hold its papers is done; a wanted paper no tar holds is `missing`.

Credentials come from boto3's usual chain (environment, ~/.aws, instance role); the requester
pays the transfer (about $0.09 per GB out of AWS, nothing inside us-east-1) and the GETs. `--plan` prints the tars, bytes, cost and time before anything is downloaded.
Exit status: 0 when every picked tar is done, 1 otherwise (or on bad input: one `error:` line).
"""
from __future__ import annotations

import argparse
import bisect
import email.utils
import fcntl
import functools
import gzip
import hashlib
import json
import logging
import os
import re
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from lxml import etree

from model import cli
from pipeline import config, store
from pipeline.archive import Limits, safe_member_path
from pipeline.arxiv_api import strict_xml
from pipeline.crawl import PAPER_SCHEMA, crawl_lock, empty_downloads, shard_stats
from pipeline.fetch import SOURCE_KINDS, download_row, sniff_kind, verify
from pipeline.licenses import licenses_for
from pipeline.shards import add_selection_args, month_range, shard_of_id

log = logging.getLogger("cvf.bulk")

MANIFEST_KEY = "src/arXiv_src_manifest.xml"
USD_PER_GB_OUT_OF_AWS = 0.09   # S3 transfer to the internet, first 10 TB a month (us-east-1)
USD_PER_1000_GETS = 0.0004     # S3 Standard GET requests, paid by the requester in any case
DEFAULT_BANDWIDTH_MB_S = 10.0  # ~100 Mbit/s
MEMBER_CAP = Limits().max_file_bytes  # one e-print read into memory at most (archive.py's per-file cap)
# Only the e-print and its metadata come from the bucket: the record says so, so a rerun of the
# crawl over the same shard (other params) opens it again.
SOURCE = "s3"


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
    record: dict                           # the contract's metadata columns (crawl.PAPER_SCHEMA)
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


# --- S3 ----------------------------------------------------------------------------------------

def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client: credentials from boto3's chain, `endpoint_url` or $AWS_ENDPOINT_URL, us-east-1
    unless configured otherwise, retries in adaptive mode."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=session.region_name or "us-east-1",
                          config=Config(retries={"max_attempts": 8, "mode": "adaptive"},
                                        connect_timeout=30, read_timeout=120))


def _s3_errors():
    from botocore.exceptions import BotoCoreError, ClientError
    return (BotoCoreError, ClientError)


def _transient_errors():
    from botocore.exceptions import (ConnectionClosedError, EndpointConnectionError, IncompleteReadError,
                                     ReadTimeoutError, ResponseStreamingError)
    from urllib3.exceptions import ProtocolError
    return (ConnectionClosedError, EndpointConnectionError, IncompleteReadError, ReadTimeoutError,
            ResponseStreamingError, ProtocolError, ConnectionError, TimeoutError)


def _describe(e: Exception) -> str:
    from botocore.exceptions import ClientError
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip(": ")
    return f"{type(e).__name__}: {e}"


def fetch_manifest(s3, bucket: str, root: Path) -> list[SourceTar]:
    """The bucket's manifest (one requester-pays GET), kept in `bulk/arXiv_src_manifest.xml`."""
    try:
        data = s3.get_object(Bucket=bucket, Key=MANIFEST_KEY, RequestPayer="requester")["Body"].read()
    except _s3_errors() as e:
        raise BulkError(f"cannot read s3://{bucket}/{MANIFEST_KEY}: {_describe(e)}") from None
    tars = parse_manifest(data)
    kept = bulk_dir(root) / PurePosixPath(MANIFEST_KEY).name
    if not kept.exists() or kept.read_bytes() != data:
        store.atomic_write_bytes(kept, data)
    return tars


class Md5Mismatch(Exception):
    pass


def download_tar(s3, bucket: str, tar: SourceTar, dest: Path, attempts: int = 5,
                 chunk: int = 1 << 20) -> dict:
    """Fetch `tar` to `dest`, verified against the manifest's md5. Bytes go to a part file named
    by that md5 first; a run killed midway leaves it, and the next one asks only for the rest (a
    ranged GET). Returns {resumed_from, bytes_downloaded, requests}. Raises Md5Mismatch (the part is
    deleted), TimeoutError (the transfer kept breaking; the part stays) or the S3 error."""
    part = dest.with_name(f"{dest.name}.{tar.md5sum}.part")  # a tar arXiv replaced never resumes an old part
    part.parent.mkdir(parents=True, exist_ok=True)
    for stale in part.parent.glob(f"{dest.name}.*.part"):  # parts of the replaced tar
        if stale != part:
            stale.unlink(missing_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > tar.size:  # cannot be this tar's beginning: start over
        part.unlink()
        have = 0
    resumed_from, received, requests = have, 0, 0
    for attempt in range(attempts):
        if have >= tar.size:
            break
        try:
            requests += 1
            resp = s3.get_object(Bucket=bucket, Key=tar.filename, RequestPayer="requester",
                                 Range=f"bytes={have}-{tar.size - 1}")
            with open(part, "ab") as f:
                for block in resp["Body"].iter_chunks(chunk):
                    f.write(block)
                    have += len(block)
                    received += len(block)
                f.flush()
                os.fsync(f.fileno())
        except _transient_errors() as e:  # a cut body: what arrived stays, the next GET goes on from there
            log.warning("%s: transfer cut at %d of %d bytes (%s); going on", tar.name, have, tar.size, e)
            time.sleep(min(30.0, 2.0 ** attempt))
    if have < tar.size:
        raise TimeoutError(f"got {have} of {tar.size} bytes after {attempts} tries; rerun to go on")
    if (md5 := file_md5(part)) != tar.md5sum:
        part.unlink()
        raise Md5Mismatch(f"md5 {md5} of the downloaded tar differs from the manifest's {tar.md5sum}; "
                          "the download was discarded")
    os.replace(part, dest)
    return {"resumed_from": resumed_from, "bytes_downloaded": received, "requests": requests}


def file_md5(path: Path) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            md5.update(block)
    return md5.hexdigest()


# --- one tar -----------------------------------------------------------------------------------

TAR_SCHEMA = pa.schema(
    [("arxiv_id", pa.string()), ("version", pa.int32()), ("member", pa.string())]
    + [(f"eprint_{f}", pa.int64() if f == "bytes" else pa.string())
       for f in ("status", "path", "sha256", "bytes", "kind", "error")]
    + [("crawled_at", pa.timestamp("us", tz="UTC"))])


def _member_item(rel: str) -> tuple[str, str]:
    """`1501/1501.00001.gz` -> (`1501.00001`, `.gz`); a version suffix is dropped."""
    name = PurePosixPath(rel).name
    for ext in (".gz", ".pdf"):
        if name.endswith(ext):
            return re.sub(r"v\d+$", "", name[: -len(ext)]), ext
    return "", ""


def read_members(tar_path: Path, papers: dict[str, Paper], root: Path, tar: SourceTar,
                 member_cap: int = MEMBER_CAP) -> list[dict]:
    """Stream the tar once and store the wanted papers' e-prints; one row per paper found."""
    rows = []
    made_at = tar.made_at()
    try:
        with tarfile.open(tar_path, mode="r|") as tf:  # a stream: one member in memory at a time
            for info in tf:
                if not info.isreg():
                    continue
                rel, problem = safe_member_path(info.name)
                item, ext = _member_item(rel)
                paper = papers.get(item)
                if paper is None or problem:
                    continue
                arxiv_id = paper.record["arxiv_id"]
                dest = root / "raw" / paper.month / f"{arxiv_id}.eprint"
                row = {"arxiv_id": arxiv_id, "version": paper.version_at(made_at), "member": rel,
                       "crawled_at": None}
                if info.size > member_cap:
                    dl = download_row(root, dest, "error", kind="",
                                      error=f"{rel}: {info.size} bytes, over the {member_cap >> 20} MiB cap")
                else:
                    data = tf.extractfile(info).read()
                    kind = sniff_kind(data)
                    error = (f"not a source archive or PDF: got {kind}" if kind not in SOURCE_KINDS
                             else verify(data, kind))
                    if error:  # the tar is verified: the member is broken at the source, for good
                        dl = download_row(root, dest, "error", data, kind, f"{rel}: {error}")
                    else:
                        store.atomic_write_bytes(dest, data)
                        dl = download_row(root, dest, "ok", data, kind)
                        row["crawled_at"] = datetime.now(timezone.utc)
                rows.append(dict(row, **{f"eprint_{k}": v for k, v in dl.items()}))
    except (tarfile.TarError, EOFError) as e:  # (a full disk is an OSError: that stops the run)
        raise BulkError(f"{tar.name}: unreadable tar although its md5 matched: {e}") from None
    return sorted({r["arxiv_id"]: r for r in rows}.values(), key=lambda r: r["arxiv_id"])


def _tar_lock(root: Path, tar: SourceTar):
    """An exclusive lock on one tar, so two workers on one data root never write the same part file."""
    path = bulk_dir(root) / "tars" / f".{tar.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise BulkError(f"{tar.name} is being fetched by another run on this data root") from None
    return f


def process_tar(tar: SourceTar, papers: list[Paper], root: str | os.PathLike, bucket: str = "arxiv",
                endpoint_url: str | None = None, s3=None, keep_tars: bool = False,
                member_cap: int = MEMBER_CAP) -> dict:
    """Fetch one tar (unless done), keep the wanted papers' e-prints; return its stats.

    Never raises for a failed tar: the stats have `done` false and an `error`, which is also
    recorded in `bulk/<tar>_failed.json` (and in the papers' records as pending)."""
    root = Path(root)
    folder = bulk_dir(root)
    if done := tar_done(root, tar, papers):
        return done
    t0 = time.time()
    failed_path = folder / f"{tar.name}_failed.json"
    previous = json.loads(failed_path.read_text()) if failed_path.exists() else {}
    dest = folder / "tars" / f"{tar.name}.tar"
    try:
        lock = _tar_lock(root, tar)
    except BulkError as e:
        return {"tar": tar.name, "done": False, "error": str(e)}
    try:
        s3 = s3 or s3_client(endpoint_url)
        transfer = {"resumed_from": 0, "bytes_downloaded": 0, "requests": 0}
        if dest.exists() and file_md5(dest) != tar.md5sum:  # kept from an older manifest's tar
            dest.unlink()
        if not dest.exists():  # a verified tar left by a run killed while reading it (or kept) is reused
            transfer = download_tar(s3, bucket, tar, dest)
        rows = read_members(dest, {p.item: p for p in papers}, root, tar, member_cap)
    except (Md5Mismatch, TimeoutError, BulkError, *_s3_errors()) as e:
        ours = isinstance(e, (Md5Mismatch, TimeoutError, BulkError))  # their message says it all
        error = f"{tar.filename}: {e if ours else _describe(e)}"
        record = {"tar": tar.name, "key": tar.filename, "md5sum": tar.md5sum, "error": error,
                  "attempts": previous.get("attempts", 0) + 1, "at": datetime.now(timezone.utc).isoformat()}
        store.atomic_write_json(failed_path, record)
        log.warning("%s", error)
        return {"tar": tar.name, "done": False, "error": error}
    finally:
        lock.close()
    store.write_rows(folder / f"{tar.name}.parquet", rows, TAR_SCHEMA)
    stats = {
        "tar": tar.name, "key": tar.filename, "month": tar.month, "md5sum": tar.md5sum, "size": tar.size,
        "looked_for": sorted(p.record["arxiv_id"] for p in papers), "found": len(rows),
        "stored": sum(r["eprint_status"] == "ok" for r in rows),
        "kinds": dict(sorted(Counter(r["eprint_kind"] for r in rows if r["eprint_status"] == "ok").items())),
        "errors": [{"arxiv_id": r["arxiv_id"], "error": r["eprint_error"]} for r in rows if r["eprint_status"] != "ok"],
        "bytes_stored": sum(r["eprint_bytes"] for r in rows if r["eprint_status"] == "ok"),
        **transfer, "seconds": round(time.time() - t0, 3), "done": True,
    }
    store.write_stats(folder, tar.name, stats)  # last: the tar is done
    failed_path.unlink(missing_ok=True)
    if not keep_tars:
        dest.unlink(missing_ok=True)
    log.info("%s: %d of %d wanted papers stored, %.1f MB fetched", tar.name, stats["stored"], len(papers),
             transfer["bytes_downloaded"] / 1e6)
    return stats


# --- month shards in the crawl's data contract ----------------------------------------------------

def _tar_rows(root: Path, name: str) -> list[dict]:
    path = bulk_dir(root) / f"{name}.parquet"
    return store.read_rows(path) if store.shard_done(bulk_dir(root), name) and path.exists() else []


def month_records(month: str, papers: list[Paper], tars: list[SourceTar], root: Path,
                  params: dict) -> tuple[list[dict], dict]:
    """The paper records of one month from its tars' results: (records, shard stats)."""
    candidates: dict[str, list[SourceTar]] = {p.record["arxiv_id"]: [] for p in papers}
    by_name = {t.name: t for t in tars}
    for name, held in pick_tars([t for t in tars if t.month == month], papers).items():
        for p in held:
            candidates[p.record["arxiv_id"]].append(by_name[name])
    holders_of_month = {t.name: t for ts in candidates.values() for t in ts}
    done = {}  # tar name -> the ids it looked for, for the done tars of this month (stats read once)
    for name, t in holders_of_month.items():
        stats = store.read_stats(bulk_dir(root), name)
        if stats and stats.get("md5sum") == t.md5sum:
            done[name] = set(stats["looked_for"])
    found: dict[str, dict] = {}
    for name in sorted(done, key=lambda n: (holders_of_month[n].timestamp, holders_of_month[n].seq_num)):
        found.update((r["arxiv_id"], r) for r in _tar_rows(root, name))  # a later tar's copy wins
    failed = {n: json.loads(p.read_text())["error"] for n in holders_of_month
              if (p := bulk_dir(root) / f"{n}_failed.json").exists()}
    harvested = licenses_for(root, [p.record["arxiv_id"] for p in papers if not p.record["license"]])
    records = []
    for paper in sorted(papers, key=lambda p: p.record["arxiv_id"]):
        arxiv_id = paper.record["arxiv_id"]
        record = empty_downloads(dict(paper.record), ("eprint",))
        record["license"] = record["license"] or harvested.get(arxiv_id, "")
        holders = candidates[arxiv_id]
        waiting = [t for t in holders if arxiv_id not in done.get(t.name, ())]
        if arxiv_id in found:
            r = found[arxiv_id]
            record.update({k: v for k, v in r.items() if k.startswith("eprint_")}, crawled_at=r["crawled_at"],
                          eprint_attempts=1)
            record["version"] = r["version"] if r["version"] is not None else record["version"]
        elif not holders:
            record.update(eprint_status="missing", eprint_attempts=1,
                          eprint_error="no tar of the manifest can hold this id")
        elif not waiting:  # every tar that could hold it was read
            record.update(eprint_status="missing", eprint_attempts=1,
                          eprint_error=f"not in {', '.join(t.filename for t in holders)}")
        else:
            record["eprint_error"] = "; ".join(failed[t.name] for t in waiting if t.name in failed) or \
                f"waiting for {', '.join(t.filename for t in waiting)}"
        records.append(record)
    requests = sum((store.read_stats(bulk_dir(root), n) or {}).get("requests", 0) for n in done)
    stats = shard_stats(month, records, params, 0.0, requests)
    stats["tars"] = sorted(holders_of_month)
    return records, stats


def write_month(month: str, papers: list[Paper], tars: list[SourceTar], root: Path, params: dict) -> dict:
    """Write `papers/<month>.parquet` (and its stats once no paper waits for a tar); papers of the
    shard that this run does not select (a crawl's cross-lists) are kept, and an e-print a crawl
    stored is kept over a bulk failure. Files are rewritten only when their content changes."""
    papers_dir = root / "papers"
    shard_file = papers_dir / f"{month}.parquet"
    lock_path = papers_dir / f".{month}.bulk.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records, stats = month_records(month, papers, tars, root, params)
        old_rows = store.read_rows(shard_file) if shard_file.exists() else []
        old = {r["arxiv_id"]: r for r in old_rows}
        for i, record in enumerate(records):
            prior = old.get(record["arxiv_id"])
            if prior and prior.get("eprint_status") == "ok" and record["eprint_status"] != "ok" \
                    and prior.get("version") == record["version"]:
                records[i] = prior
        mine = {r["arxiv_id"] for r in records}
        records = sorted(records + [r for r in old_rows if r["arxiv_id"] not in mine], key=lambda r: r["arxiv_id"])
        table = pa.Table.from_pylist(records, schema=PAPER_SCHEMA)
        if not shard_file.exists() or not pq.read_table(shard_file).equals(table):
            store.atomic_write_parquet(shard_file, table)
        stats = shard_stats(month, records, params, 0.0, stats["requests"]) | {"tars": stats["tars"]}
        if not stats["done"]:  # papers wait for a tar: the shard is open again
            store.stats_path(papers_dir, month).unlink(missing_ok=True)
        elif store.read_stats(papers_dir, month) != json.loads(json.dumps(stats, default=str)):
            store.write_stats(papers_dir, month, stats)
    return stats


# --- the whole run ---------------------------------------------------------------------------

SELECTION_SCHEMA = pa.schema([("tar", pa.string()), ("arxiv_id", pa.string()),
                              ("version_numbers", pa.list_(pa.int32())),
                              ("version_dates", pa.list_(pa.timestamp("us", tz="UTC")))])


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
        store.write_rows(path, rows, SELECTION_SCHEMA)
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


def prepare(metadata: str | os.PathLike, start: str, end: str, root: Path, *, bucket: str = "arxiv",
            endpoint_url: str | None = None, category: str = "cs.CV", include_cross_lists: bool = False,
            s3=None) -> tuple[list[SourceTar], dict[str, list[Paper]], dict[str, Paper]]:
    """(manifest tars, picked {tar name: papers}, wanted papers by id): everything before a download."""
    papers = read_metadata(metadata, start, end, category, include_cross_lists)
    s3 = s3 or s3_client(endpoint_url)
    tars = [t for t in fetch_manifest(s3, bucket, root) if start <= t.month <= end]
    return tars, pick_tars(tars, papers.values()), papers


def write_months(tars: list[SourceTar], papers: dict[str, Paper], root: Path, params: dict) -> list[dict]:
    """Write every month shard of `papers` (`write_month`), each with its own month's tars.

    Holds the data root's crawl lock (store.Busy names the holder): a per-paper crawl writes the
    same `papers/<month>.parquet` files, so the two never write them at once."""
    by_month: dict[str, list[Paper]] = {}
    for p in papers.values():
        by_month.setdefault(p.month, []).append(p)
    tars_of: dict[str, list[SourceTar]] = {}
    for t in tars:
        tars_of.setdefault(t.month, []).append(t)
    with crawl_lock(root):
        return [write_month(m, ps, tars_of.get(m, []), root, params) for m, ps in sorted(by_month.items())]


def run(metadata: str | os.PathLike, start: str, end: str, root: str | os.PathLike | None = None, *,
        bucket: str = "arxiv", endpoint_url: str | None = None, category: str = "cs.CV",
        include_cross_lists: bool = False, keep_tars: bool = False, s3=None,
        bandwidth_mb_s: float = DEFAULT_BANDWIDTH_MB_S) -> dict:
    """The bulk route in this process, tar after tar; returns {plan, tars: [stats], months: [stats]}."""
    root = config.data_root(root)
    s3 = s3 or s3_client(endpoint_url)
    tars, picked, papers = prepare(metadata, start, end, root, bucket=bucket, category=category,
                                   include_cross_lists=include_cross_lists, s3=s3)
    summary = plan(tars, picked, root, bandwidth_mb_s)
    log.info("%s", format_plan(summary))
    tar_stats = [process_tar(t, picked[t.name], root, bucket, s3=s3, keep_tars=keep_tars)
                 for t in tars if t.name in picked]
    months = write_months(tars, papers, root, selection_params(bucket, category, include_cross_lists))
    return {"plan": summary, "tars": tar_stats, "months": months}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bulk", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metadata", required=True, metavar="FILE", type=cli.readable_file,
                    help="arXiv metadata snapshot (JSON lines, optionally .gz) or a licenses/<set>.parquet harvest")
    add_selection_args(ap)
    ap.add_argument("--bucket", default="arxiv", help="the requester-pays bucket (default arxiv)")
    ap.add_argument("--endpoint-url", help="S3 endpoint (default $AWS_ENDPOINT_URL, else AWS)")
    ap.add_argument("--plan", action="store_true",
                    help="print the tars, bytes, cost and time, and download nothing")
    ap.add_argument("--bandwidth", type=cli.positive_float, default=DEFAULT_BANDWIDTH_MB_S, metavar="MB/S",
                    help=f"download speed the plan assumes, in MB/s (default {DEFAULT_BANDWIDTH_MB_S:g})")
    ap.add_argument("--keep-tars", action="store_true", help="keep each tar under bulk/tars/ once done")
    args = ap.parse_args(argv)
    try:
        month_range(args.start, args.end)
    except ValueError as e:
        ap.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    root = config.data_root(args.data)
    try:
        s3 = s3_client(args.endpoint_url)
        if args.plan:
            tars, picked, _ = prepare(args.metadata, args.start, args.end, root, bucket=args.bucket,
                                      category=args.category, include_cross_lists=args.include_cross_lists, s3=s3)
            print(format_plan(plan(tars, picked, root, args.bandwidth), [t for t in tars if t.name in picked],
                              picked, root))
            return 0
        result = run(args.metadata, args.start, args.end, root, bucket=args.bucket, category=args.category,
                     include_cross_lists=args.include_cross_lists, keep_tars=args.keep_tars, s3=s3,
                     bandwidth_mb_s=args.bandwidth)
    except (BulkError, OSError, store.Busy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except _s3_errors() as e:
        print(f"error: S3: {_describe(e)}", file=sys.stderr)
        return 1
    print(format_plan(result["plan"]))
    open_tars = [s for s in result["tars"] if not s["done"]]
    for s in open_tars:
        print(f"tar not done (rerun to retry): {s['error']}", file=sys.stderr)
    for m in result["months"]:
        for f in m["failed"]:
            print(f"failed for good: {f['arxiv_id']} {f['download']} {f['status']}: {f['error']}")
    stored = sum(s.get("stored", 0) for s in result["tars"] if s["done"])
    print(f"{len(result['tars']) - len(open_tars)}/{len(result['tars'])} tars done, "
          f"{sum(m['papers'] for m in result['months'])} papers ({stored} e-prints from the tars of this selection), "
          f"results in {root / 'papers'}")
    return 1 if open_tars else 0


if __name__ == "__main__":
    sys.exit(main())
