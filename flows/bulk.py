"""Prefect flow `bulk-arxiv`: pipeline.bulk's tars in parallel on the Dask task runner.

Deployed by prefect.yaml as `bulk-arxiv/cs-cv-2010-2022`:

    prefect deployment run 'bulk-arxiv/cs-cv-2010-2022' -p metadata=/data/arxiv-metadata-oai-snapshot.json --watch
    prefect deployment run 'bulk-arxiv/cs-cv-2010-2022' -p start=2021-01 -p end=2021-01 \\
        -p endpoint_url=http://127.0.0.1:5000 -p workers=4 --watch

The metadata and the manifest are read once, in the flow, and the picked papers' ids written to
`bulk/selection-<hash>.parquet`; each picked tar is one task `tar-<name>` (fetch, md5 check, keep
the wanted members) on a local Dask cluster of `workers`
processes, or an existing cluster at `scheduler_address`. Downloads are network-bound, so more
workers than cores pays, up to the bandwidth; each holds one tar on disk at a time. Then the month
shards are written in the crawl's contract. A rerun skips done tars; a tar that still fails after
its task retries fails the flow run once every tar has been tried.
"""
from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.common import dask_runner
from pipeline import bulk, bulk_records, bulk_selection, config


class TarsOpen(Exception):
    """Some tars are not done (a failed download or md5 check); a rerun retries them."""


# The tar's own files are its durable result (a rerun reads them), so no Prefect cache.
@task(task_run_name="tar-{name}", cache_policy=NONE, retries=2, retry_delay_seconds=60)
def bulk_tar_task(name: str, tar: dict, selection: str, root: str, bucket: str, endpoint_url: str | None,
                  keep_tars: bool) -> dict:
    papers = bulk_selection.read_selection(selection, name)
    stats = bulk_records.process_tar(bulk_selection.SourceTar(**tar), papers, root, bucket, endpoint_url,
                                     keep_tars=keep_tars)
    if not stats["done"]:
        raise TarsOpen(stats["error"])
    return stats


@flow(name="bulk-tars")
def bulk_tars_flow(tars: list[dict], selection: str, root: str, bucket: str, endpoint_url: str | None,
                   keep_tars: bool) -> list[dict]:
    """One task per tar (manifest entries as dicts; the papers each looks for are in `selection`)."""
    names = [bulk_selection.SourceTar(**t).name for t in tars]
    futures = [bulk_tar_task.submit(n, t, selection, root, bucket, endpoint_url, keep_tars)
               for n, t in zip(names, tars)]
    results = [(n, f.result(raise_on_failure=False)) for n, f in zip(names, futures)]
    return [r if isinstance(r, dict) else {"tar": n, "done": False, "error": str(r)} for n, r in results]


@flow(name="bulk-arxiv", log_prints=True)
def bulk_arxiv(metadata: str | None = None, start: str = "2010-01", end: str = "2022-12", category: str = "cs.CV",
               include_cross_lists: bool = False, bucket: str = "arxiv", endpoint_url: str | None = None,
               data_root: str | None = None, scheduler_address: str | None = None, workers: int | None = None,
               keep_tars: bool = False, bandwidth_mb_s: float = bulk_selection.DEFAULT_BANDWIDTH_MB_S) -> dict:
    """Take the `category` papers of `start`..`end` (YYYY-MM) from the bucket's source tars.

    `metadata`: the arXiv snapshot or a licenses/<set>.parquet harvest (default
    `<data root>/arxiv-metadata-oai-snapshot.json`); `endpoint_url` defaults to $AWS_ENDPOINT_URL,
    credentials to boto3's chain on the workers.
    """
    root = config.data_root(data_root)
    metadata = metadata or str(root / "arxiv-metadata-oai-snapshot.json")
    tars, picked, papers = bulk.prepare(metadata, start, end, root, bucket=bucket, endpoint_url=endpoint_url,
                                        category=category, include_cross_lists=include_cross_lists)
    summary = bulk_selection.plan(tars, picked, root, bandwidth_mb_s)
    print(bulk_selection.format_plan(summary))
    chosen = [asdict(t) for t in tars if t.name in picked]
    selection = str(bulk_selection.write_selection(root, picked))
    on_dask = bulk_tars_flow.with_options(task_runner=dask_runner(scheduler_address, workers))
    tar_stats = on_dask(chosen, selection, str(root), bucket, endpoint_url, keep_tars) if chosen else []
    params = bulk_selection.selection_params(bucket, category, include_cross_lists)
    months = bulk_records.write_months(tars, papers, root, params)
    open_tars = [s for s in tar_stats if not s["done"]]
    log = get_run_logger()
    for s in open_tars:
        log.warning("%s not done: %s", s["tar"], s["error"])
    print(f"{len(tar_stats) - len(open_tars)}/{len(tar_stats)} tars done, {sum(m['papers'] for m in months)} papers "
          f"in {len(months)} month shards; results in {root}/papers")
    if open_tars:
        raise TarsOpen(f"tars not done: {' '.join(s['tar'] for s in open_tars)}; run the deployment again to retry")
    return {"plan": summary, "tars": tar_stats, "months": months}


if __name__ == "__main__":
    bulk_arxiv()
