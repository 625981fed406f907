"""Prefect flow `crawl-arxiv`: one task per month shard over `pipeline.crawl.crawl_shard`.

Deployed by prefect.yaml as `crawl-arxiv/cs-cv-2010-2022`:

    prefect deployment run 'crawl-arxiv/cs-cv-2010-2022' --watch
    prefect deployment run 'crawl-arxiv/cs-cv-2010-2022' -p start=2021-01 -p end=2021-02 \\
        -p api_url=http://127.0.0.1:8123/api/query --watch

With `-p harvest_licenses=true` the flow first harvests the licences of the OAI-PMH set `oai_set`
(`pipeline.licenses`: a few hundred ListRecords pages instead of one GetRecord per paper); the
shards then take each paper's licence from that table, and shards done before get it written in.

A rerun resumes: done shards (their stats file exists) return at once without a request, open
ones retry only what is still pending. A shard left open fails its task, and the flow run fails
once every shard has been tried, so `--watch` exits non-zero. Task retries are only for a
listing that failed (no paper's `--max-attempts` is at stake): pending downloads wait for the
next run of the deployment, so a few minutes of retries cannot use up their attempts. A host
that blocks the crawl (`pipeline.crawl.HostBlocked`) stops the flow run at once, with no retry
and no later shard started; its papers stay pending for the next run. One run per data root:
the deployment has `concurrency_limit: 1`, and the flow holds the root's crawl lock.
"""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from pipeline import config
from pipeline.crawl import (BLOCK_AFTER, DOWNLOADS, HostBlocked, budget_left, crawl_lock, crawl_shard, make_fetcher,
                            max_papers_note)
from pipeline.licenses import fill_paper_licenses, harvest, oai_url as default_oai_url
from pipeline.shards import month_range


class ShardOpen(Exception):
    """A month shard still has pending downloads or could not be listed."""

    def __init__(self, message: str, stats: dict | None = None):
        super().__init__(message)
        self.stats = stats  # what the shard holds so far (it counts against --max-papers)

    def __reduce__(self):  # survives pickling with its stats
        return ShardOpen, (str(self), self.stats)


def listing_failed(task, task_run, state) -> bool:
    """Retry a shard task only when its listing failed: a retry of pending downloads minutes
    later would spend their --max-attempts, and a blocked host wants hours, not a retry."""
    try:
        state.result()
    except HostBlocked:
        return False
    except ShardOpen as e:
        return bool(e.stats and e.stats.get("error"))
    except Exception:  # noqa: BLE001 (anything else: a crash worth another try)
        return True
    return False


# The shard's own files are its durable result (a rerun reads them), so no Prefect cache.
@task(task_run_name="crawl-{month}", cache_policy=NONE, retries=2, retry_delay_seconds=60,
      retry_condition_fn=listing_failed)
def crawl_month(month: str, data_root: str, delay: float | None, shard_kw: dict) -> dict:
    log = get_run_logger()
    root = config.data_root(data_root)
    stats = crawl_shard(month, root, make_fetcher(root, delay), **shard_kw)
    log.info("%s: %d papers, %d fully downloaded; downloads: %d failed for good, %d pending; %.1f MB in %.0f s",
             month, stats["papers"], stats["downloaded"], len(stats["failed"]), stats["pending"],
             stats["bytes"] / 1e6, stats["seconds"])
    for f in stats["failed"]:
        log.warning("%s %s %s: %s", f["arxiv_id"], f["download"], f["status"], f["error"])
    if not stats["done"]:
        raise ShardOpen(f"{month} left open: {stats['pending']} pending. {stats.get('error', '')}", stats)
    return stats


@task(task_run_name="harvest-licenses-{set_spec}", cache_policy=NONE, retries=2, retry_delay_seconds=60)
def harvest_licenses_task(oai_url: str, set_spec: str, data_root: str, delay: float | None) -> dict:
    root = config.data_root(data_root)
    stats = harvest(oai_url, root, make_fetcher(root, delay, timeout=120.0), set_spec=set_spec)
    log = get_run_logger()
    log.info("licences of set %s: %d records, %d pages, %d requests, %.0f s", set_spec,
             stats["records"], stats["pages"], stats["requests"], stats["seconds"])
    if changed := fill_paper_licenses(root):  # shards crawled before are done: the crawl will not revisit them
        log.info("licences filled in %d paper records of done shards %s", sum(changed.values()), " ".join(changed))
    return stats


@flow(name="crawl-arxiv", log_prints=True)
def crawl_arxiv(start: str = "2010-01", end: str = "2022-12", category: str = "cs.CV",
                include_cross_lists: bool = False, max_papers: int | None = None,
                downloads: list[str] = list(DOWNLOADS), pdfs: str = "auto", retry_failed: bool = False,
                block_after: int = BLOCK_AFTER, data_root: str | None = None,
                api_url: str | None = None, eprint_url: str | None = None, pdf_url: str | None = None,
                oai_url: str | None = None, delay: float | None = None, task_retries: int = 2,
                retry_delay_s: float = 60, harvest_licenses: bool = False, oai_set: str = "cs") -> list[dict]:
    """Harvest `category` papers submitted from `start` to `end` (YYYY-MM) with their e-prints
    (and PDFs: `pdfs` auto, all or none, as `--pdfs` of `python -m pipeline.crawl`).

    Endpoints, delay and data root default to the environment (CVF_ARXIV_*, CVF_DATA).
    `max_papers` bounds the run as in `python -m pipeline.crawl`: shards after the one where it
    is reached are not started. `harvest_licenses`: first harvest the licences of the OAI-PMH set
    `oai_set` in bulk (from `oai_url`, else $CVF_ARXIV_OAI_URL); a failed harvest is a warning,
    the shards still run (with one GetRecord per paper the table lacks when `oai_url` is given).
    `retry_failed`: try again every download that failed for good. `block_after`: papers in a
    row a host may refuse before the run stops (HostBlocked).
    """
    shard_kw = {"api_url": api_url, "eprint_url": eprint_url, "pdf_url": pdf_url, "oai_url": oai_url,
                "category": category, "include_cross_lists": include_cross_lists, "downloads": tuple(downloads),
                "pdfs": pdfs, "retry_failed": retry_failed, "block_after": block_after}
    root = str(config.data_root(data_root))
    with crawl_lock(root):  # raises store.Busy (the flow run fails) when another crawl has the root
        if harvest_licenses:  # optional enrichment: its failure never holds the crawl back
            harvest_task = harvest_licenses_task.with_options(retries=task_retries, retry_delay_seconds=retry_delay_s)
            state = harvest_task(oai_url or default_oai_url(), oai_set, root, delay, return_state=True)
            if not state.is_completed():
                print(f"licence harvest failed, crawling on without it: {state.result(raise_on_failure=False)}")
        shard_task = crawl_month.with_options(retries=task_retries, retry_delay_seconds=retry_delay_s)
        months = month_range(start, end)
        # Shards run one after another: every request shares one politeness budget anyway.
        states, stats = {}, []
        for month in months:
            left = budget_left(max_papers, stats)
            if left is not None and left <= 0:
                break
            states[month] = shard_task(month, root, delay, dict(shard_kw, max_papers=left), return_state=True)
            outcome = states[month].result(raise_on_failure=False)  # the stats, or why the task failed
            if isinstance(outcome, HostBlocked):  # later shards would meet the same block
                print(f"error: {outcome}")
                raise outcome
            stats.append(outcome if isinstance(outcome, dict) else getattr(outcome, "stats", None)
                         or {"shard": month, "papers": 0})
        open_shards = [month for month, state in states.items() if not state.is_completed()]
        done = [state.result() for state in states.values() if state.is_completed()]
        print(f"{len(done)}/{len(states)} shards done, {sum(s['papers'] for s in done)} papers; "
              f"results in {root}/papers")
        if note := max_papers_note(max_papers, stats, months):
            print(note)
        if open_shards:
            raise ShardOpen(f"shards left open: {' '.join(open_shards)}; run the deployment again to resume")
        return done


if __name__ == "__main__":
    crawl_arxiv()
