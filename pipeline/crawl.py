"""The arXiv crawl: per month shard, list the papers, then download each one's e-print (and PDF).

    python -m pipeline.crawl --from 2010-01 --to 2022-12            # cs.CV, primary only
    python -m pipeline.crawl --from 2021-01 --to 2021-02 --max-papers 50 --include-cross-lists
    python -m pipeline.crawl --from 2010-01 --to 2022-12 --retry-failed   # try every failed download again

`--pdfs auto` (the default) fetches a paper's PDF only when its e-print is no LaTeX source (a
PDF-only submission, a gzip'd PDF/PostScript, or no e-print at all): extraction reads the PDF
only then, and on arXiv, where few submissions are PDF-only, that nearly halves the requests
and the bytes. `--pdfs all` fetches every PDF, `none` none.

`--max-papers N` bounds a run: shards are taken in order, the one where the budget runs out is
crawled with what is left (its stats record that cap, so a rerun with a larger or no cap
reopens it) and later shards are not started.

Writes, under the dataset root ($CVF_DATA): `papers/<shard>.parquet` (one record per paper,
checkpointed atomically every few seconds), `raw/<shard>/<id>.eprint` and `raw/<shard>/<id>.pdf`,
and last `papers/<shard>_stats.json`, which marks the shard done. A shard is done when every
download has a final status (ok, missing, withdrawn, error); transient failures stay `pending`
and a rerun retries them, at most `max_attempts` times across runs, after which they become
`error`; a 403 or an HTML page instead of the file counts as such a failure (it may be the
host's, not the paper's). Files already stored and verified are never fetched again, so a
crawl killed at any moment (even with SIGKILL) and run again ends in the same state as one that
never stopped.
`--retry-failed` reopens every download that failed for good (missing, withdrawn, error) with
its attempts reset.

A host that blocks the crawl (HTTP 403, an HTML page instead of an archive, or transient
failures beyond the retry budget, for `--block-after` papers in a row) stops the run with one
`error:` line naming the host; those papers stay `pending` with no attempt counted, so the same
command, run once the block is lifted, finishes them. One crawl per data root at a time: a
second one exits at once naming the first (the lock `<root>/.crawl.lock` dies with its process).
Exit status: 0 when every shard is done (papers that failed for good are listed), 1 when some
shard is still open (or another crawl holds the root), 3 when a host blocks the crawl.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import requests
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from model import cli
from pipeline import config, store
from pipeline.contract import DOWNLOAD_FIELDS, PAPER_SCHEMA
from pipeline.arxiv_api import ArxivAPI, MetadataError, fetch_license, paper_record, search_month
from pipeline.fetch import PoliteFetcher, TransientError, download_file
from pipeline.licenses import licenses_for
from pipeline.shards import add_selection_args, month_range

log = logging.getLogger("cvf.crawl")

DOWNLOADS = ("eprint", "pdf")
# When the PDF is fetched: only when the e-print is no source (extraction reads it only then), always, never.
PDF_MODES = ("auto", "all", "none")
SOURCE_ARCHIVES = ("tar.gz", "tar", "gz-tex")  # e-print kinds that hold the LaTeX source
FAILED = ("missing", "withdrawn", "error")  # final statuses without a file: what --retry-failed reopens
BLOCK_AFTER = 3  # papers in a row answered like a block before the run stops
def make_fetcher(root: Path, delay: float | None = None, **kw) -> PoliteFetcher:
    """A fetcher whose politeness budget is shared by every worker using the same data root."""
    return PoliteFetcher(config.arxiv_delay() if delay is None else delay, root / ".politeness", **kw)


class HostBlocked(Exception):
    """A host answers as if it blocks the crawl: the run stops, the papers it refused stay pending."""

    def __init__(self, host: str, seen: str):
        super().__init__(f"{host} is blocking or failing the crawl: {seen}; stopped, nothing was marked failed. "
                         "Wait (an hour or more; check $CVF_CONTACT and --delay), then run the same command again")
        self.host, self.seen = host, seen

    def __reduce__(self):  # survives pickling (Prefect task results)
        return HostBlocked, (self.host, self.seen)


def crawl_lock(root: Path):
    """One crawl per data root: hold this while crawling (raises store.Busy naming the holder)."""
    return store.exclusive(Path(root) / ".crawl.lock", f"a crawl of {root}")


def _reset_download(record: dict, d: str, status: str) -> None:
    record.update({f"{d}_{f}": "" for f in DOWNLOAD_FIELDS}, **{f"{d}_bytes": 0, f"{d}_attempts": 0})
    record[f"{d}_status"] = status


def empty_downloads(record: dict, wanted: tuple[str, ...]) -> dict:
    for d in DOWNLOADS:
        _reset_download(record, d, "pending" if d in wanted else "skipped")
    record["crawled_at"] = None
    return record


def _merge(fresh: dict, old: dict | None, wanted: tuple[str, ...], root: Path, retry_failed: bool = False) -> dict:
    """Fresh metadata, keeping what earlier runs already downloaded for the same version.

    `retry_failed`: downloads that failed for good are tried again, their attempts from zero."""
    if old is None or old["version"] != fresh["version"]:
        if old is not None:  # a new version: the stored files are stale
            for d in DOWNLOADS:
                if old[f"{d}_path"]:
                    (root / old[f"{d}_path"]).unlink(missing_ok=True)
        return empty_downloads(fresh, wanted)
    record = dict(old, **{k: v for k, v in fresh.items() if k != "license" or v})
    for d in wanted:  # a download skipped before but wanted now, or a failed one to try again
        if record[f"{d}_status"] == "skipped" or (retry_failed and record[f"{d}_status"] in FAILED):
            _reset_download(record, d, "pending")
    return record


def _pdf_wanted(record: dict, pdfs: str) -> bool | None:
    """Whether to fetch this paper's pending PDF (None: decide later, its e-print is pending)."""
    if pdfs != "auto":
        return True
    if record["eprint_status"] == "pending":
        return None
    return not (record["eprint_status"] == "ok" and record["eprint_kind"] in SOURCE_ARCHIVES)


def _block_sign(row: dict) -> str:
    """What in a download's result looks like a host refusing the crawl ('' for none)."""
    if row["error"] == "HTTP 403":
        return "HTTP 403 (forbidden)"
    if row["kind"] == "html":
        return "an HTML page instead of an archive or PDF"
    if row["status"] == "pending":  # transient failures (429/503, timeouts) beyond the retry budget
        return row["error"]
    return ""


class BlockWatch:
    """Per host and download kind, the downloads in a row whose result looks like a refusal.
    When one such streak spans `block_after` papers the host is taken to block the crawl: every
    refused download of that host is put back as never tried, and HostBlocked is raised. A
    shorter streak stays what it was: those papers' own failures."""

    def __init__(self, block_after: int = BLOCK_AFTER):
        self.block_after = block_after  # 0: never stop
        # (host, "eprint"|"pdf") -> [(record, its download fields before the request)]
        self.streaks: dict[tuple[str, str], list[tuple[dict, dict]]] = {}

    def see(self, url: str, what: str, record: dict, before: dict, row: dict) -> None:
        host = urlsplit(url).netloc or url
        if not (sign := _block_sign(row)) or self.block_after <= 0:
            self.streaks.pop((host, what), None)
            return
        streak = self.streaks.setdefault((host, what), [])
        streak.append((record, before))
        papers = list(dict.fromkeys(r["arxiv_id"] for r, _ in streak))
        if len(papers) >= self.block_after:
            for key in [k for k in self.streaks if k[0] == host]:
                for r, fields in self.streaks.pop(key):
                    r.update(fields)  # pending again, the attempt not counted
            raise HostBlocked(host, f"{sign} for {len(papers)} papers in a row ({papers[0]}..{papers[-1]})")


def _download(record: dict, what: str, url: str, dest: Path, root: Path, fetcher: PoliteFetcher,
              max_attempts: int) -> dict:
    row = download_file(fetcher, url, dest, root)
    record.update({f"{what}_{k}": v for k, v in row.items()})
    record[f"{what}_attempts"] += 1
    if row["status"] == "ok" and record.get("crawled_at") is None:
        record["crawled_at"] = datetime.now(timezone.utc)
    if row["status"] == "missing" and "withdrawn" in record["comment"].lower():
        record[f"{what}_status"] = "withdrawn"
    elif _block_sign(row):  # transient, or a refusal (403, HTML) that may be the host's rather than the paper's
        failed = record[f"{what}_attempts"] >= max_attempts
        record[f"{what}_status"] = "error" if failed else "pending"
        if failed:
            record[f"{what}_error"] = f"gave up after {max_attempts} attempts: {row['error']}"
    return row


def shard_stats(month: str, records: list[dict], params: dict, seconds: float, requests: int,
                listed: int | None = None, cap: int | None = None) -> dict:
    errors = Counter(f"{d}:{r[f'{d}_status']}" for r in records for d in DOWNLOADS
                     if r[f"{d}_status"] not in ("ok", "skipped"))
    failed = [{"arxiv_id": r["arxiv_id"], "download": d, "status": r[f"{d}_status"], "error": r[f"{d}_error"]}
              for r in records for d in DOWNLOADS if r[f"{d}_status"] in ("missing", "withdrawn", "error")]
    pending = sum(r[f"{d}_status"] == "pending" for r in records for d in DOWNLOADS)
    return {
        "shard": month,
        "papers": len(records),
        "downloaded": sum(all(r[f"{d}_status"] in ("ok", "skipped") for d in DOWNLOADS) for r in records),
        "failed": failed,
        "pending": pending,
        "bytes": sum(r[f"{d}_bytes"] for r in records for d in DOWNLOADS if r[f"{d}_status"] == "ok"),
        "seconds": round(seconds, 3),
        "requests": requests,
        "errors": dict(sorted(errors.items())),
        "params": params,
        "listed": len(records) if listed is None else listed,  # papers the API listed (before any cap)
        "max_papers": cap,  # the cap that cut this shard short, None when it holds every listed paper
        "done": pending == 0,
    }


def budget_left(max_papers: int | None, stats: list[dict]) -> int | None:
    """Papers a run bounded by `max_papers` may still take after the shards in `stats` (None: no bound)."""
    return None if max_papers is None else max_papers - sum(s["papers"] for s in stats)


def _satisfies(done: dict, params: dict, max_papers: int | None) -> bool:
    """A done shard serves a rerun with the same parameters unless the rerun may take more papers
    or PDFs (`--pdfs all` covers `auto`, which covers `none`; shards from before `--pdfs` had all)."""
    cap = done.get("max_papers")
    had = dict(done.get("params") or {})
    had.setdefault("pdfs", "all" if "pdf" in had.get("downloads", ()) else "none")
    rank = {"none": 0, "auto": 1, "all": 2}

    def besides_pdfs(p: dict) -> dict:
        return dict(p, pdfs=None, downloads=[d for d in p.get("downloads", ()) if d != "pdf"])
    return (besides_pdfs(had) == besides_pdfs(params) and rank.get(had["pdfs"], -1) >= rank[params["pdfs"]]
            and (cap is None or (max_papers is not None and max_papers <= cap)))


def crawl_shard(month: str, root: Path, fetcher: PoliteFetcher, *, api_url: str | None = None,
                eprint_url: str | None = None, pdf_url: str | None = None, oai_url: str | None = None,
                category: str = "cs.CV", include_cross_lists: bool = False, max_papers: int | None = None,
                downloads: tuple[str, ...] = DOWNLOADS, pdfs: str = "auto", max_attempts: int = 3,
                retry_failed: bool = False, block_after: int = BLOCK_AFTER, checkpoint_s: float = 5.0,
                progress: bool = False) -> dict:
    """Crawl one month shard (resuming whatever an earlier run left); return its stats.

    The stats have `done` true when the shard is finished (and its stats file written).
    `max_papers` keeps the first papers by id; the stats' `max_papers` says when it cut some off.
    `pdfs`: when a wanted PDF is fetched (PDF_MODES). `retry_failed`: reopen failed downloads.
    Raises HostBlocked when a host refuses `block_after` papers in a row (see BlockWatch); what
    the shard holds is stored first. The caller holds `crawl_lock(root)`.
    """
    if pdfs not in PDF_MODES:
        raise ValueError(f"pdfs must be one of {', '.join(PDF_MODES)}, not {pdfs!r}")
    downloads = tuple(d for d in downloads if d != "pdf" or pdfs != "none")
    pdfs = pdfs if "pdf" in downloads else "none"
    t0, requests0 = time.time(), fetcher.requests_made
    params = {"category": category, "include_cross_lists": include_cross_lists, "downloads": sorted(downloads),
              "pdfs": pdfs}
    papers_dir = root / "papers"
    if done := store.read_stats(papers_dir, month):
        if _satisfies(done, params, max_papers) and not (retry_failed and done["failed"]):
            return done
        store.stats_path(papers_dir, month).unlink()  # other parameters, a larger cap, a retry: open again
    # half-written by a killed run; a file some live process is writing stays
    store.remove_dead_temporaries([*(root / "raw" / month).glob(".*.tmp"), *papers_dir.glob(f".{month}*.tmp")])
    shard_file = papers_dir / f"{month}.parquet"
    old = {r["arxiv_id"]: r for r in store.read_rows(shard_file)} if shard_file.exists() else {}

    try:
        results = search_month(ArxivAPI(fetcher, api_url or config.arxiv_api_url()), category, month)
    except (MetadataError, TransientError, requests.RequestException) as e:
        if isinstance(e, TransientError) or getattr(e, "status", None) == 403:
            api_host = urlsplit(api_url or config.arxiv_api_url()).netloc
            raise HostBlocked(api_host, f"listing {month} failed: {e}") from e
        log.warning("%s: metadata failed, shard left open: %s", month, e)
        stats = shard_stats(month, list(old.values()), params, time.time() - t0, fetcher.requests_made - requests0)
        return dict(stats, done=False, error=f"metadata: {e}")
    fresh = [paper_record(r) for r in results if include_cross_lists or r.primary_category == category]
    fresh = sorted({p["arxiv_id"]: p for p in fresh}.values(), key=lambda p: p["arxiv_id"])
    listed, cap = len(fresh), max_papers if max_papers is not None and max_papers < len(fresh) else None
    records = [_merge(p, old.get(p["arxiv_id"]), downloads, root, retry_failed) for p in fresh[:cap]]

    eprint_url, pdf_url = eprint_url or config.arxiv_eprint_url(), pdf_url or config.arxiv_pdf_url()
    harvested = licenses_for(root, [r["arxiv_id"] for r in records])  # `python -m pipeline.licenses`
    last_checkpoint, watch = time.time(), BlockWatch(block_after)
    bar = tqdm(records, desc=month, unit="paper", disable=not progress, leave=False)
    try:
        for record in bar:
            arxiv_id = record["arxiv_id"]
            if arxiv_id in harvested:  # the bulk harvest knows it: no request
                record["license"] = harvested[arxiv_id]
            elif oai_url and not record["license"]:
                try:
                    record["license"] = fetch_license(fetcher, oai_url, arxiv_id)
                except (MetadataError, TransientError, ValueError, requests.RequestException) as e:  # optional
                    log.warning("%s: no licence from OAI-PMH: %s", arxiv_id, e)
            for what, template in (("eprint", eprint_url), ("pdf", pdf_url)):
                if record[f"{what}_status"] != "pending":
                    continue
                if what == "pdf" and (wanted := _pdf_wanted(record, pdfs)) is not True:
                    if wanted is False:  # the e-print is the source: extraction will not read the PDF
                        record["pdf_status"] = "skipped"
                    continue
                url = template.format(id=arxiv_id)
                before = {k: record[k] for k in (*(f"{what}_{f}" for f in DOWNLOAD_FIELDS), f"{what}_attempts")}
                row = _download(record, what, url, root / "raw" / month / f"{arxiv_id}.{what}", root, fetcher,
                                max_attempts)
                watch.see(url, what, record, before, row)
            if time.time() - last_checkpoint > checkpoint_s:
                store.write_rows(shard_file, records, PAPER_SCHEMA)
                last_checkpoint = time.time()
    except HostBlocked:
        store.write_rows(shard_file, records, PAPER_SCHEMA)  # what was stored stays; the refused ones pending
        raise
    finally:
        bar.close()

    store.write_rows(shard_file, records, PAPER_SCHEMA)
    stats = shard_stats(month, records, params, time.time() - t0, fetcher.requests_made - requests0, listed, cap)
    if stats["done"]:
        store.write_stats(papers_dir, month, stats)
    log.info("%s: %d papers%s, %d fully downloaded; downloads: %d failed, %d pending", month, stats["papers"],
             f" (of {listed}: --max-papers)" if cap is not None else "", stats["downloaded"],
             len(stats["failed"]), stats["pending"])
    return stats


def crawl(start: str, end: str, root: str | Path | None = None, *, delay: float | None = None,
          timeout: float = 60.0, retries: int = 4, max_papers: int | None = None, progress: bool = False,
          **kw) -> list[dict]:
    """Crawl the month shards from `start` to `end` (YYYY-MM, inclusive) in order; return their stats.

    With `max_papers`, shards after the one where that many papers are reached are not started
    (they have no stats in the returned list). Holds the data root's crawl lock (store.Busy when
    another crawl has it); HostBlocked stops the run.
    """
    root = config.data_root(root)
    fetcher = make_fetcher(root, delay, timeout=timeout, max_retries=retries)
    months = month_range(start, end)
    stats = []
    with crawl_lock(root):
        for month in tqdm(months, desc="shards", unit="shard", disable=not progress or len(months) == 1):
            left = budget_left(max_papers, stats)
            if left is not None and left <= 0:
                break
            stats.append(crawl_shard(month, root, fetcher, max_papers=left, progress=progress, **kw))
    return stats


def max_papers_note(max_papers: int | None, stats: list[dict], months: list[str]) -> str:
    """Where `--max-papers` stopped a run ('' when it did not)."""
    capped = [s for s in stats if s.get("max_papers") is not None]
    not_started = months[len(stats):]
    if max_papers is None or not (capped or not_started):
        return ""
    note = f"--max-papers {max_papers} reached"
    if capped:
        note += f" in {capped[-1]['shard']} ({capped[-1]['papers']} of its {capped[-1]['listed']} papers)"
    if not_started:
        note += f"; not started: {not_started[0]}..{not_started[-1]} ({len(not_started)} shards)"
    return note + "; rerun with a larger or no --max-papers to go on"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.crawl", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_selection_args(ap)
    ap.add_argument("--max-papers", type=cli.positive_int, help="at most this many papers in this run (all shards together, "
                                                  "in order; later shards are not started)")
    ap.add_argument("--downloads", nargs="*", default=list(DOWNLOADS), choices=DOWNLOADS,
                    help="what may be downloaded (default: eprint pdf; none = metadata only)")
    ap.add_argument("--pdfs", choices=PDF_MODES, default="auto",
                    help="when to fetch a paper's PDF: auto (default) only when its e-print is no LaTeX source "
                         "(PDF-only, or no e-print): the only PDFs extraction reads; all: every one; none: never")
    ap.add_argument("--retry-failed", action="store_true",
                    help="try again every download that failed for good (missing, withdrawn, error), attempts reset")
    ap.add_argument("--block-after", type=cli.non_negative_int, default=BLOCK_AFTER,
                    help=f"stop the run when a host refuses this many papers in a row (HTTP 403, an HTML page, "
                         f"transient failures beyond --retries), leaving them pending (default {BLOCK_AFTER}; "
                         "0: never stop)")
    ap.add_argument("--delay", type=cli.non_negative_float, help=f"seconds between requests to a host (default $CVF_ARXIV_DELAY "
                                                f"or {config.DEFAULT_DELAY})")
    ap.add_argument("--timeout", type=cli.positive_float, default=60.0, help="per-request timeout in seconds (default 60)")
    ap.add_argument("--retries", type=cli.non_negative_int, default=4, help="retries of a failing request within a run (default 4)")
    ap.add_argument("--max-attempts", type=cli.positive_int, default=3, help="tries per download across runs before giving up (default 3)")
    ap.add_argument("--api-url", help="Atom API query URL (default $CVF_ARXIV_API_URL or arXiv's)")
    ap.add_argument("--eprint-url", help="e-print URL template with {id} (default $CVF_ARXIV_EPRINT_URL)")
    ap.add_argument("--pdf-url", help="PDF URL template with {id} (default $CVF_ARXIV_PDF_URL)")
    ap.add_argument("--oai-url", help="OAI-PMH URL: fill `license` from it, one request per paper the harvested "
                                      "licenses/ lack (python -m pipeline.licenses harvests them in bulk)")
    args = ap.parse_args(argv)
    try:
        month_range(args.start, args.end)
    except ValueError as e:
        ap.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    root = config.data_root(args.data)
    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, not through them
            stats = crawl(args.start, args.end, root, delay=args.delay, timeout=args.timeout, retries=args.retries,
                          api_url=args.api_url, eprint_url=args.eprint_url, pdf_url=args.pdf_url,
                          oai_url=args.oai_url, category=args.category, include_cross_lists=args.include_cross_lists,
                          max_papers=args.max_papers, downloads=tuple(args.downloads), pdfs=args.pdfs,
                          max_attempts=args.max_attempts, retry_failed=args.retry_failed,
                          block_after=args.block_after, progress=True)
    except store.Busy as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except HostBlocked as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    open_shards = [s["shard"] for s in stats if not s["done"]]
    for s in stats:
        for f in s["failed"]:
            print(f"failed for good: {f['arxiv_id']} {f['download']} {f['status']}: {f['error']}")
    print(f"{len(stats) - len(open_shards)}/{len(stats)} shards done, "
          f"{sum(s['papers'] for s in stats)} papers, results in {root / 'papers'}")
    if note := max_papers_note(args.max_papers, stats, month_range(args.start, args.end)):
        print(note)
    if open_shards:
        print(f"shards left open (rerun to retry): {' '.join(open_shards)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
