"""Prefect flows over the classifier, filter and publish stages (thin wiring, no logic here).

* `train-classifier`: pipeline.classify.train
* `score-figures`: pipeline.classify.score, one task per figure shard (a failed shard is
  retried alone; done shards are skipped by the stage itself)
* `filter-and-publish`: pipeline.filter.run then pipeline.publish.publish
"""
from __future__ import annotations

from prefect import flow, get_run_logger, task

from pipeline import classify, filter as flt, publish
from pipeline.config import data_root


@task(name="train")
def train_task(root: str, weights: str | None, truth: str | None, cvf_index: list[str], head: str, version: str | None,
               captions: str = "auto") -> str:
    return str(classify.train(root, weights=weights, truth=truth, cvf_index=cvf_index, head=head, version=version,
                              captions=captions))


@task(name="score-shard", retries=1)
def score_shard(root: str, shard: str, version: str | None, weights: str | None, batch_size: int) -> dict:
    return classify.score(root, version=version, weights=weights, batch_size=batch_size, shards=[shard])


@task(name="filter")
def filter_task(root: str, threshold: float | None, target_count: int | None, seed: int) -> dict:
    _, report = flt.run(root, threshold, target_count, seed)
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


@flow(name="score-figures")
def score_figures(root: str | None = None, version: str | None = None, weights: str | None = None,
                  batch_size: int = 64) -> dict:
    root = str(data_root(root))
    totals = {"shards": 0, "skipped_shards": 0, "scored": 0, "errors": 0}
    for shard in classify.figure_shards(data_root(root)):
        for k, v in score_shard(root, shard, version, weights, batch_size).items():
            totals[k] += v
    get_run_logger().info(f"scores: {totals}")
    return totals


@flow(name="filter-and-publish")
def filter_and_publish(name: str, root: str | None = None, threshold: float | None = None,
                       target_count: int | None = None, seed: int = 0, out: str = "manifests",
                       overwrite: bool = False, hf_repo: str | None = None) -> dict:
    root = str(data_root(root))
    report = filter_task(root, threshold, target_count, seed)
    target = publish_task(root, name, out, overwrite, hf_repo)
    summary = {"manifest": target, "train": report["per_split"]["train"]["figures"],
               "val": report["per_split"]["val"]["figures"], "threshold": report["threshold"]}
    get_run_logger().info(f"published {target}: {summary['train']} train + {summary['val']} val figures")
    return summary
