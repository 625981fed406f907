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

The parts: `pipeline.bulk_selection` (metadata, manifest, which tars, the plan and the
selection file), `pipeline.bulk_s3` (the bucket), `pipeline.bulk_records` (one tar's members and
the month shards); this module runs them.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from model import cli
from pipeline import config, store
from pipeline.bulk_records import process_tar, write_months
from pipeline.bulk_s3 import describe_s3_error, fetch_manifest, s3_client, s3_errors
from pipeline.bulk_selection import (BulkError, DEFAULT_BANDWIDTH_MB_S, Paper, SourceTar,
                                     format_plan, pick_tars, plan, read_metadata, selection_params)
from pipeline.shards import add_selection_args, month_range

log = logging.getLogger("cvf.bulk")


# --- the whole run ---------------------------------------------------------------------------

def prepare(metadata: str | os.PathLike, start: str, end: str, root: Path, *, bucket: str = "arxiv",
            endpoint_url: str | None = None, category: str = "cs.CV", include_cross_lists: bool = False,
            s3=None) -> tuple[list[SourceTar], dict[str, list[Paper]], dict[str, Paper]]:
    """(manifest tars, picked {tar name: papers}, wanted papers by id): everything before a download."""
    papers = read_metadata(metadata, start, end, category, include_cross_lists)
    s3 = s3 or s3_client(endpoint_url)
    tars = [t for t in fetch_manifest(s3, bucket, root) if start <= t.month <= end]
    return tars, pick_tars(tars, papers.values()), papers


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
    except s3_errors() as e:
        print(f"error: S3: {describe_s3_error(e)}", file=sys.stderr)
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
