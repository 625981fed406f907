"""Prefect flow `extract-figures`: pipeline.extract over month shards, in parallel on Dask.

Extraction is CPU-bound and independent per shard, so each shard is one task of the subflow
`extract-shards` on Prefect's Dask task runner: a local cluster (one single-threaded worker
process per core) by default, or an existing cluster when given its scheduler's address (a
flow parameter, so deployments can choose). Corpus-wide duplicates are flagged once every
shard has finished, for every shard that succeeded: a shard that fails (after its retry) is
reported, the others finish and get their duplicates flagged, and then the flow fails naming
the failed shards. Done shards are skipped and open ones resume (the stage does that).

    python -m flows.extract --shards 2021-01 2021-02 --workers 2
    python -m flows.extract --scheduler-address tcp://10.0.0.5:8786
"""
from __future__ import annotations

import argparse
import sys

from prefect import flow, get_run_logger, task

from flows.common import ShardsFailed, dask_runner, failed_message, outcomes
from model import cli
from pipeline import extract
from pipeline.config import data_root
from pipeline.naming import CVF_FORMATS, parse_formats
from pipeline.shards import check_shard_files


@task(name="extract-shard", retries=1)
def extract_shard_task(shard: str, root: str, box: str, official: bool, name_filter: bool,
                       timeout_s: float, formats: list[str]) -> dict:
    return extract.extract_shard(shard, root, options=extract.render_options(box, official, timeout_s),
                                 apply_name_filter=name_filter, progress=False, formats=tuple(formats))


@task(name="flag-duplicates")
def dedup_task(root: str) -> dict:
    return extract.dedup_corpus(root)


@task(name="contact-sheet")
def contact_sheet_task(root: str, count: int) -> str:
    return str(extract.write_contact_sheet(root, count))


@flow(name="extract-shards")
def extract_shards_flow(shards: list[str], root: str, box: str, official: bool, name_filter: bool,
                        timeout_s: float, formats: list[str]) -> tuple[list[dict], dict[str, str]]:
    futures = [extract_shard_task.submit(s, root, box, official, name_filter, timeout_s, formats)
               for s in shards]
    return outcomes(shards, futures)


@flow(name="extract-figures")
def extract_figures(shards: list[str] | None = None, root: str | None = None,
                    scheduler_address: str | None = None, workers: int | None = None,
                    box: str = "crop", official: bool = False, name_filter: bool = True,
                    timeout_s: float = 60.0, contact_sheet: int = 0,
                    formats: list[str] | None = None) -> dict:
    """Extract `shards` (default: every shard with papers) on Dask, then flag duplicates;
    with `contact_sheet` > 0 also write figures/contact_sheet.png of that many figures."""
    root = str(data_root(root))
    shards = shards or extract.shards_with_papers(root)
    on_dask = extract_shards_flow.with_options(task_runner=dask_runner(scheduler_address, workers))
    formats = list(parse_formats(",".join(formats)) if formats else CVF_FORMATS)
    stats, failed = on_dask(shards, root, box, official, name_filter, timeout_s, formats)
    duplicates = dedup_task(root)  # over the shards that are done, failed ones aside
    summary = {"shards": len(stats), "papers": sum(s["papers"] for s in stats),
               "figures": sum(s["figures"] for s in stats), "duplicates": duplicates,
               "open_shards": [s["shard"] for s in stats if not s.get("done", True)],
               "failed_shards": failed}
    if contact_sheet:
        summary["contact_sheet"] = contact_sheet_task(root, contact_sheet)
    get_run_logger().info(f"extract-figures: {summary}")
    if failed:
        raise ShardsFailed(failed_message(failed, len(stats), "extracted, duplicates flagged"))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.extract",
        description="Prefect flow extract-figures: extract figures from every crawled month "
                    "shard in parallel on Dask (a local cluster, or --scheduler-address), then "
                    "flag duplicates across the corpus. Same records as python -m pipeline.extract.")
    parser.add_argument("--root", type=cli.writable_dir, help="dataset root (default $CVF_DATA or ./data)")
    parser.add_argument("--shards", nargs="*", metavar="YYYY-MM",
                        help="month shards (default: every shard with papers)")
    parser.add_argument("--scheduler-address", help="Dask scheduler of an existing cluster, "
                                                    "e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--workers", type=cli.positive_int, help="local cluster size (default: CPU count)")
    parser.add_argument("--box", choices=["crop", "media"], default="crop",
                        help="PDF page box to render (default crop: what the paper shows)")
    parser.add_argument("--official", action="store_true",
                        help="the official CVF pixels (MediaBox, 200 DPI then thumbnail)")
    parser.add_argument("--no-name-filter", action="store_true",
                        help="also render names with 'arch'/'pipeline', which CVF dropped")
    parser.add_argument("--timeout", type=cli.positive_float, default=60.0, help="seconds per figure file (default 60)")
    parser.add_argument("--formats", default=",".join(CVF_FORMATS), metavar="LIST",
                        help="figure file formats taken as candidates (default pdf,png, as CVF; "
                             "EPS counts as the PDF it becomes), e.g. pdf,png,jpg")
    parser.add_argument("--contact-sheet", type=cli.non_negative_int, metavar="N", default=0,
                        help="also write figures/contact_sheet.png of N sampled figures")
    args = parser.parse_args(argv)
    try:
        check_shard_files(args.shards, data_root(args.root) / "papers", "pipeline.crawl")
        formats = list(parse_formats(args.formats))
    except ValueError as e:
        parser.error(str(e))
    if not (args.shards or extract.shards_with_papers(args.root)):
        parser.error(f"no papers/<shard>.parquet under {data_root(args.root)} (run python -m pipeline.crawl)")
    try:
        summary = extract_figures(args.shards, args.root, args.scheduler_address, args.workers,
                                  args.box, args.official, not args.no_name_filter, args.timeout,
                                  args.contact_sheet, formats)
    except ShardsFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    dup = summary["duplicates"]
    print(f"{summary['shards']} shards, {summary['papers']} papers, {summary['figures']} figures; "
          f"{dup['exact_duplicates']} exact and {dup['near_duplicates']} near duplicates flagged "
          f"(figures/duplicates.json)")
    if summary["open_shards"]:
        print(f"shards left open (rerun once the crawl settles them): {' '.join(summary['open_shards'])}")
    if summary.get("contact_sheet"):
        print(f"contact sheet: {summary['contact_sheet']}")


if __name__ == "__main__":
    main()
