"""Prefect flows over the classifier, filter and publish stages (thin wiring, no logic here).

* `train-classifier`: pipeline.classify.train
* `score-figures`: pipeline.classify.score, one task per figure shard, in parallel on the same
  Dask task runner as extraction (`flows.common.dask_runner`: a local cluster, or an existing
  one by its scheduler's address). Each shard is checkpointed by the stage (its scores and
  stats; done shards of the same model are skipped); a failed shard is retried alone, then
  reported, and the others finish before the flow fails naming it.
* `filter-and-publish`: pipeline.contamination.run (when evaluation folders are given), then
  pipeline.filter.run (which leaves out the figures it found unless keep_contaminated), then
  pipeline.publish.publish
"""
from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows.common import ShardsFailed, dask_runner, failed_message, outcomes
from pipeline import classify, contamination, filter as flt, publish
from pipeline.config import data_root


@task(name="train")
def train_task(root: str, weights: str | None, truth: str | None, cvf_index: list[str], head: str, version: str | None,
               captions: str = "auto") -> str:
    return str(classify.train(root, weights=weights, truth=truth, cvf_index=cvf_index, head=head, version=version,
                              captions=captions))


@task(name="score-shard", retries=1)
def score_shard(root: str, shard: str, version: str | None, weights: str | None, batch_size: int) -> dict:
    return classify.score(root, version=version, weights=weights, batch_size=batch_size, shards=[shard],
                          keep_going=False)  # a failure fails the task: Prefect retries it


@task(name="contamination")
def contamination_task(root: str, evaluation_sets: list[str], names: list[str] | None,
                       lists: list[str] | None) -> dict:
    reports = contamination.run(evaluation_sets, root, names, lists, progress=False)
    for report in reports.values():
        get_run_logger().info(contamination.format_report(report))
    return reports


@task(name="filter")
def filter_task(root: str, threshold: float | None, target_count: int | None, seed: int,
                keep_contaminated: bool = False) -> dict:
    _, report = flt.run(root, threshold, target_count, seed, keep_contaminated)
    get_run_logger().info(flt.format_report(report))
    return report


@task(name="publish")
def publish_task(root: str, name: str, out: str, overwrite: bool, hf_repo: str | None) -> str:
    target, _ = publish.publish(root, name, out=out, overwrite=overwrite, hf_repo=hf_repo)
    return target


@flow(name="train-classifier")
def train_classifier(root: str | None = None, weights: str | None = None, truth: str | None = None,
                     cvf_index: list[str] | None = None, head: str = "logreg", version: str | None = None,
                     captions: str = "auto") -> str:
    out = train_task(str(data_root(root)), weights, truth, cvf_index or [], head, version, captions)
    get_run_logger().info(f"classifier -> {out}")
    return out


@flow(name="score-shards")
def score_shards_flow(root: str, shards: list[str], version: str | None, weights: str | None,
                      batch_size: int) -> tuple[list[dict], dict[str, str]]:
    return outcomes(shards, [score_shard.submit(root, s, version, weights, batch_size) for s in shards])


@flow(name="score-figures")
def score_figures(root: str | None = None, version: str | None = None, weights: str | None = None,
                  batch_size: int = 64, scheduler_address: str | None = None,
                  workers: int | None = None) -> dict:
    root = str(data_root(root))
    shards = classify.figure_shards(data_root(root))
    on_dask = score_shards_flow.with_options(task_runner=dask_runner(scheduler_address, workers))
    results, failed = on_dask(root, shards, version, weights, batch_size)
    totals = {"shards": 0, "skipped_shards": 0, "scored": 0, "errors": 0}
    for summary in results:
        for k in totals:
            totals[k] += summary[k]
    totals["failed_shards"] = failed
    get_run_logger().info(f"scores: {totals}")
    if failed:
        raise ShardsFailed(failed_message(failed, len(results), "scored"))
    return totals


@flow(name="filter-and-publish")
def filter_and_publish(name: str, root: str | None = None, threshold: float | None = None,
                       target_count: int | None = None, seed: int = 0, out: str = "manifests",
                       overwrite: bool = False, hf_repo: str | None = None,
                       evaluation_sets: list[str] | None = None, evaluation_names: list[str] | None = None,
                       evaluation_lists: list[str] | None = None, keep_contaminated: bool = False) -> dict:
    """`evaluation_sets`: folders of evaluation images to look for in the figures first (names and id
    lists as `python -m pipeline.contamination --name/--list`); the figures found are left out unless
    `keep_contaminated`. Results of earlier runs (contamination/*.parquet) are applied either way."""
    root = str(data_root(root))
    if evaluation_sets:
        contamination_task(root, evaluation_sets, evaluation_names, evaluation_lists)
    report = filter_task(root, threshold, target_count, seed, keep_contaminated)
    target = publish_task(root, name, out, overwrite, hf_repo)
    summary = {"manifest": target, "train": report["per_split"]["train"]["figures"],
               "val": report["per_split"]["val"]["figures"], "threshold": report["threshold"]}
    get_run_logger().info(f"published {target}: {summary['train']} train + {summary['val']} val figures")
    return summary
