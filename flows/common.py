"""What the flows share: the Dask task runner they run shards on, and how a flow reports shards
that failed while the others finished."""
from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner


def dask_runner(scheduler_address: str | None = None, workers: int | None = None) -> DaskTaskRunner:
    """The remote cluster at `scheduler_address`, else a local one: one process per worker,
    one thread each (rendering holds the GIL), no dashboard port to collide with."""
    if scheduler_address:
        return DaskTaskRunner(address=scheduler_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers or os.cpu_count() or 1,
                                          "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


class ShardsFailed(RuntimeError):
    """Some shards failed; the others finished (their results are done and kept)."""


def outcomes(shards: list[str], futures) -> tuple[list[dict], dict[str, str]]:
    """Each shard's result, and {shard: why} for those whose task failed: one failing shard
    does not take the others' results (or what comes after them) down."""
    results, failed = [], {}
    for shard, future in zip(shards, futures):
        try:
            results.append(future.result())
        except Exception as e:  # the task's own exception, whatever the stage raised
            failed[shard] = f"{type(e).__name__}: {e}"
    return results, failed


def failed_message(failed: dict[str, str], finished: int, what: str) -> str:
    """One line: which shards failed and why (the first few), and that the others finished."""
    whys = "; ".join(f"{s}: {why}" for s, why in list(failed.items())[:3])
    more = f" (+{len(failed) - 3} more)" if len(failed) > 3 else ""
    return (f"{len(failed)} shards failed ({whys}{more}); the other {finished} were {what}; "
            f"rerun to retry the failed ones")
