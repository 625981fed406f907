"""The bulk route's records: one source tar read member by member (only the wanted papers',
each capped in size, stored as the crawl stores e-prints) with its `bulk/<tar>.parquet` and
`_stats.json`, and the month shards `papers/<shard>.parquet` written in the crawl's contract once
every tar that can hold a month's papers is done.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tarfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import store
from pipeline.archive import Limits, safe_member_path
from pipeline.bulk_s3 import (Md5Mismatch, describe_s3_error, download_tar, file_md5, s3_client,
                              s3_errors)
from pipeline.bulk_selection import BulkError, Paper, SourceTar, bulk_dir, pick_tars, tar_done
from pipeline.contract import PAPER_SCHEMA, TAR_SCHEMA
from pipeline.crawl import crawl_lock, empty_downloads, shard_stats
from pipeline.fetch import SOURCE_KINDS, download_row, sniff_kind, verify
from pipeline.licenses import licenses_for

log = logging.getLogger("cvf.bulk")
MEMBER_CAP = Limits().max_file_bytes  # one e-print read into memory at most (archive.py's per-file cap)


# --- one tar -----------------------------------------------------------------------------------


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
    lock = store.Lock(bulk_dir(root) / "tars" / f".{tar.name}.lock", wait=False)
    try:
        lock.acquire()
    except store.Busy:
        raise BulkError(f"{tar.name} is being fetched by another run on this data root") from None
    return lock


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
    except (Md5Mismatch, TimeoutError, BulkError, *s3_errors()) as e:
        ours = isinstance(e, (Md5Mismatch, TimeoutError, BulkError))  # their message says it all
        error = f"{tar.filename}: {e if ours else describe_s3_error(e)}"
        record = {"tar": tar.name, "key": tar.filename, "md5sum": tar.md5sum, "error": error,
                  "attempts": previous.get("attempts", 0) + 1, "at": datetime.now(timezone.utc).isoformat()}
        store.atomic_write_json(failed_path, record)
        log.warning("%s", error)
        return {"tar": tar.name, "done": False, "error": error}
    finally:
        lock.release()
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
    with store.Lock(papers_dir / f".{month}.bulk.lock"):
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
