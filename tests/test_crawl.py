"""The crawl against the replay: records, resumability, failure caps, SIGKILL, shared politeness."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline import store
from pipeline.crawl import PAPER_SCHEMA, crawl_shard, main
from pipeline.fetch import PoliteFetcher
from pipeline.replay.corpus import load_papers
from replay_fixtures import MONTHS, corpus, server  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent


def _urls(server) -> dict:
    e = server.endpoints()
    return {"api_url": e["CVF_ARXIV_API_URL"], "eprint_url": e["CVF_ARXIV_EPRINT_URL"], "pdf_url": e["CVF_ARXIV_PDF_URL"]}


def _cli_args(server, root, *extra, end=MONTHS[-1], delay=0.0) -> list[str]:
    e = server.endpoints()
    return ["--from", MONTHS[0], "--to", end, "--data", str(root), "--delay", str(delay),
            "--api-url", e["CVF_ARXIV_API_URL"], "--eprint-url", e["CVF_ARXIV_EPRINT_URL"],
            "--pdf-url", e["CVF_ARXIV_PDF_URL"], *extra]


def _fetcher(root, **kw) -> PoliteFetcher:
    return PoliteFetcher(**{"delay": 0, "lock_dir": root / ".politeness", "timeout": 2, "max_retries": 1,
                            "backoff": 0.01, **kw})


def _state(root: Path) -> dict:
    """Everything a crawl leaves behind, minus wall-clock figures."""
    out = {}
    for month in MONTHS:
        rows = pq.read_table(root / "papers" / f"{month}.parquet").to_pylist()
        out[month] = [dict(r, crawled_at=r["crawled_at"] is not None) for r in rows]  # a wall-clock time
        stats = store.read_stats(root / "papers", month)
        out[f"{month}_stats"] = stats and {k: v for k, v in stats.items() if k not in ("seconds", "requests")}
    out["files"] = {p.relative_to(root).as_posix(): store.sha256_file(p) for p in sorted((root / "raw").rglob("*"))
                    if p.is_file()}
    return out


def test_crawl_writes_the_contract_and_reruns_fetch_nothing(server, corpus, data_root, capsys):
    assert main(_cli_args(server, data_root)) == 0
    papers = load_papers(corpus)
    for month in MONTHS:
        table = pq.read_table(data_root / "papers" / f"{month}.parquet")
        assert table.schema.equals(PAPER_SCHEMA)
        rows = {r["arxiv_id"]: r for r in table.to_pylist()}
        expected = {p["arxiv_id"]: p for p in papers if p["published"][:7] == month and p["primary_category"] == "cs.CV"}
        assert rows.keys() == expected.keys()
        for arxiv_id, r in rows.items():
            p = expected[arxiv_id]
            assert (r["version"], r["title"], r["authors"]) == (p["version"], p["title"], p["authors"])
            assert r["license"] == ""  # no OAI-PMH enrichment asked for
            if p["withdrawn"]:
                assert r["eprint_status"] == r["pdf_status"] == "withdrawn" and r["crawled_at"] is None
                continue
            assert r["crawled_at"] is not None  # when its files were stored: the manifests' crawl date
            served = (corpus / "eprint" / arxiv_id).read_bytes()
            assert r["eprint_status"] == "ok" and r["eprint_sha256"] == store.sha256_bytes(served)
            assert (data_root / r["eprint_path"]).read_bytes() == served
            assert r["eprint_path"] == f"raw/{month}/{arxiv_id}.eprint"
            assert r["pdf_kind"] == "pdf" and r["eprint_attempts"] == r["pdf_attempts"] == 1
        stats = store.read_stats(data_root / "papers", month)
        assert stats["done"] and stats["papers"] == len(expected) and stats["pending"] == 0
        assert stats["bytes"] == sum(r["eprint_bytes"] + r["pdf_bytes"] for r in rows.values())
    assert "withdrawn" in capsys.readouterr().out  # permanent failures are listed

    before = _state(data_root)
    crawled_at = {m: pq.read_table(data_root / "papers" / f"{m}.parquet").column("crawled_at") for m in MONTHS}
    n = len(server.replay.log)
    assert main(_cli_args(server, data_root)) == 0
    assert len(server.replay.log) == n, "done shards are skipped without a request"
    for month in MONTHS:  # an open shard re-lists its papers but refetches nothing stored
        (data_root / "papers" / f"{month}_stats.json").unlink()
    assert main(_cli_args(server, data_root)) == 0
    assert all(path.startswith("/api/query") for _, path, _ in server.replay.log[n:])
    assert _state(data_root) == before
    for m in MONTHS:  # nothing was fetched again, so the crawl date stays that of the first run
        assert pq.read_table(data_root / "papers" / f"{m}.parquet").column("crawled_at").equals(crawled_at[m])


def test_cross_lists_max_papers_metadata_only_and_licence(server, corpus, data_root):
    fetcher = _fetcher(data_root)
    oai = server.endpoints()["CVF_ARXIV_OAI_URL"]
    stats = crawl_shard("2021-01", data_root, fetcher, include_cross_lists=True, downloads=(), oai_url=oai,
                        **_urls(server))
    rows = store.read_rows(data_root / "papers" / "2021-01.parquet")
    jan = {p["arxiv_id"]: p for p in load_papers(corpus) if p["published"].startswith("2021-01")}
    assert {r["arxiv_id"] for r in rows} == {a for a, p in jan.items() if "cs.CV" in p["categories"]}
    assert any(r["primary_category"] != "cs.CV" for r in rows)
    assert all(r["eprint_status"] == r["pdf_status"] == "skipped" for r in rows)
    assert all(r["license"] == jan[r["arxiv_id"]]["license"] for r in rows)
    assert stats["done"] and not any("/e-print/" in p for _, p, _ in server.replay.log)

    # other parameters reopen the shard: now with downloads, at most 2 papers
    stats = crawl_shard("2021-01", data_root, fetcher, max_papers=2, **_urls(server))
    rows = store.read_rows(data_root / "papers" / "2021-01.parquet")
    assert stats["done"] and len(rows) == 2 and all(r["eprint_status"] in ("ok", "withdrawn") for r in rows)


def test_a_broken_oai_answer_leaves_the_licence_empty_and_the_crawl_goes_on(server, corpus, data_root):
    server.replay.set_faults([{"match": "/oai", "fault": "malformed"}])  # licence enrichment is optional
    oai = server.endpoints()["CVF_ARXIV_OAI_URL"]
    stats = crawl_shard("2021-01", data_root, _fetcher(data_root), downloads=(), oai_url=oai, **_urls(server))
    assert stats["done"] and stats["papers"] > 0
    assert all(r["license"] == "" for r in store.read_rows(data_root / "papers" / "2021-01.parquet"))


def _primary_ids(corpus, month: str) -> list[str]:
    return sorted(p["arxiv_id"] for p in load_papers(corpus)
                  if p["published"].startswith(month) and p["primary_category"] == "cs.CV")


def test_max_papers_bounds_the_whole_run(server, corpus, data_root, capsys):
    jan, feb = _primary_ids(corpus, "2021-01"), _primary_ids(corpus, "2021-02")
    assert len(feb) >= 2
    # the budget runs out inside February: January whole, February cut to its first paper by id
    assert main(_cli_args(server, data_root, "--max-papers", str(len(jan) + 1))) == 0
    out = capsys.readouterr().out
    assert f"reached in 2021-02 (1 of its {len(feb)} papers)" in out
    assert [r["arxiv_id"] for r in store.read_rows(data_root / "papers" / "2021-01.parquet")] == jan
    assert [r["arxiv_id"] for r in store.read_rows(data_root / "papers" / "2021-02.parquet")] == feb[:1]
    stats = {m: store.read_stats(data_root / "papers", m) for m in MONTHS}
    assert stats["2021-01"]["max_papers"] is None and stats["2021-02"]["max_papers"] == 1
    assert stats["2021-02"]["listed"] == len(feb) and stats["2021-02"]["done"]

    n = len(server.replay.log)  # the same cap again: nothing to do
    assert main(_cli_args(server, data_root, "--max-papers", str(len(jan) + 1))) == 0
    assert len(server.replay.log) == n
    # no cap: only the capped shard reopens, and fetches only what it lacks
    assert main(_cli_args(server, data_root)) == 0
    paths = [path for _, path, _ in server.replay.log[n:]]
    assert sum(p.startswith("/api/query") for p in paths) == 1 and all("2021-01" not in p for p in paths)
    assert not any(feb[0] in p for p in paths)
    assert [r["arxiv_id"] for r in store.read_rows(data_root / "papers" / "2021-02.parquet")] == feb
    assert store.read_stats(data_root / "papers", "2021-02")["max_papers"] is None


def test_max_papers_reached_leaves_later_shards_unstarted(server, corpus, data_root, capsys):
    jan = _primary_ids(corpus, "2021-01")
    assert main(_cli_args(server, data_root, "--max-papers", str(len(jan)))) == 0
    assert "not started: 2021-02..2021-02 (1 shards)" in capsys.readouterr().out
    assert store.shard_done(data_root / "papers", "2021-01")
    assert not (data_root / "papers" / "2021-02.parquet").exists()
    assert not any("2021-02" in p or "202102" in p for _, p, _ in server.replay.log)


def test_transient_failures_keep_the_shard_open_up_to_a_cap(server, corpus, data_root):
    victim = next(p["arxiv_id"] for p in load_papers(corpus)
                  if p["published"].startswith("2021-01") and p["primary_category"] == "cs.CV" and not p["withdrawn"])
    server.replay.set_faults([{"match": f"/e-print/{victim}", "fault": "503"}])
    args = _cli_args(server, data_root, "--max-attempts", "2", "--retries", "0", end="2021-01")
    assert main(args) == 1  # the shard could not be finished
    assert not store.shard_done(data_root / "papers", "2021-01")
    row = next(r for r in store.read_rows(data_root / "papers" / "2021-01.parquet") if r["arxiv_id"] == victim)
    assert (row["eprint_status"], row["eprint_attempts"], row["pdf_status"]) == ("pending", 1, "ok")

    assert main(args) == 0  # second and last attempt: a final error, the shard is done
    row = next(r for r in store.read_rows(data_root / "papers" / "2021-01.parquet") if r["arxiv_id"] == victim)
    assert row["eprint_status"] == "error" and row["eprint_attempts"] == 2 and "gave up after 2" in row["eprint_error"]
    stats = store.read_stats(data_root / "papers", "2021-01")
    assert any(f["arxiv_id"] == victim and f["status"] == "error" for f in stats["failed"])
    assert stats["errors"]["eprint:error"] == 1


def test_metadata_failure_leaves_the_shard_open(server, data_root):
    assert crawl_shard("2021-01", data_root, _fetcher(data_root), **_urls(server))["done"]
    before = store.read_rows(data_root / "papers" / "2021-01.parquet")
    server.replay.set_faults([{"match": "/api/query", "fault": "malformed"}])
    # other parameters reopen the done shard (a smaller cap would not); the listing fails; what was stored stays
    stats = crawl_shard("2021-01", data_root, _fetcher(data_root), include_cross_lists=True, **_urls(server))
    assert not stats["done"] and "malformed" in stats["error"]
    assert not store.shard_done(data_root / "papers", "2021-01")
    assert store.read_rows(data_root / "papers" / "2021-01.parquet") == before


def test_sigkill_at_any_moment_then_rerun_equals_an_uninterrupted_crawl(server, corpus, tmp_path):
    reference = tmp_path / "reference"
    assert main(_cli_args(server, reference)) == 0

    killed = tmp_path / "killed"
    env = dict(os.environ, CVF_DATA=str(killed))
    # a slowed-down crawl (0.1 s between requests) killed at several points of its progress:
    # while listing, between and during downloads and checkpoints, then run to the end
    for requests_before_kill, pause in ((1, 0.0), (4, 0.05), (6, 0.0), (9, 0.05)):
        start = len(server.replay.log)
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.crawl", *_cli_args(server, killed, delay=0.1)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while len(server.replay.log) < start + requests_before_kill and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(pause)  # land inside a request sometimes, between requests other times
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not all(store.shard_done(killed / "papers", m) for m in MONTHS), "the kills came too late to matter"
    assert main(_cli_args(server, killed)) == 0
    assert _state(killed) == _state(reference)
    assert not list(killed.rglob("*.tmp")), "temporary files of killed runs are cleaned up"


def _hammer(lock_dir: str, url: str, n: int, delay: float) -> None:
    fetcher = PoliteFetcher(delay=delay, lock_dir=lock_dir, timeout=5)
    for _ in range(n):
        fetcher.get(url)


def test_several_workers_share_one_politeness_budget(server, tmp_path):
    delay = 0.3
    url = f"{server.url}/api/query?search_query=cat:cs.CV&max_results=1"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), url, 3, delay)) for _ in range(2)]
    threads = [threading.Thread(target=_hammer, args=(str(tmp_path), url, 3, delay)) for _ in range(2)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join(60)
    times = sorted(t for t, _, _ in server.replay.log)
    assert len(times) == 12
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= delay, f"requests {min(gaps):.3f}s apart with a {delay}s delay"

    # a Retry-After answer to one worker holds back the others too
    server.replay.set_faults([{"match": "/api/query", "fault": "503", "retry_after": 1, "times": 1}])
    server.replay.log.clear()
    threads = [threading.Thread(target=_hammer, args=(str(tmp_path), url, 1, 0)) for _ in range(2)]
    for w in threads:
        w.start()
    for w in threads:
        w.join(30)
    times = sorted(t for t, _, _ in server.replay.log)
    assert len(times) == 3 and times[1] - times[0] >= 0.99

