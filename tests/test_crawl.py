"""The crawl against the replay: records, resumability, failure caps, SIGKILL, shared politeness,
PDFs only when needed, blocks that stop the run and heal, --retry-failed, one crawl per root."""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import store
from pipeline.crawl import PAPER_SCHEMA, SOURCE_ARCHIVES, crawl_shard, main
from pipeline.fetch import PoliteFetcher, sniff_kind
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
            assert r["eprint_attempts"] == 1
            if r["eprint_kind"] in SOURCE_ARCHIVES:  # --pdfs auto: no PDF beside a LaTeX source
                assert r["pdf_status"] == "skipped" and r["pdf_attempts"] == 0 and not r["pdf_path"]
            else:
                assert r["pdf_kind"] == "pdf" and r["pdf_attempts"] == 1
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
    # the PDF waits: whether it is needed depends on what the e-print turns out to be
    assert (row["eprint_status"], row["eprint_attempts"], row["pdf_status"]) == ("pending", 1, "pending")

    assert main(args) == 0  # second and last attempt: a final error, the shard is done
    row = next(r for r in store.read_rows(data_root / "papers" / "2021-01.parquet") if r["arxiv_id"] == victim)
    assert row["eprint_status"] == "error" and row["eprint_attempts"] == 2 and "gave up after 2" in row["eprint_error"]
    assert row["pdf_status"] == "ok"  # no e-print: the PDF is what extraction will read
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
    for requests_before_kill, pause in ((1, 0.0), (3, 0.05), (2, 0.0), (4, 0.05)):
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



# --- PDFs only when needed ------------------------------------------------------------------------

def _requested(server, endpoint: str, since: int = 0) -> list[str]:
    """The arXiv ids requested from /e-print/ or /pdf/ since log entry `since`, in order."""
    return [path.rsplit("/", 1)[1] for _, path, _ in server.replay.log[since:] if path.startswith(f"/{endpoint}/")]


def test_pdfs_auto_fetches_a_pdf_only_for_an_eprint_that_is_no_source(server, corpus, data_root):
    assert main(_cli_args(server, data_root)) == 0
    papers = [p for p in load_papers(corpus) if p["primary_category"] == "cs.CV"]
    no_source = sorted(p["arxiv_id"] for p in papers if p["withdrawn"]
                       or sniff_kind((corpus / "eprint" / p["arxiv_id"]).read_bytes()) not in SOURCE_ARCHIVES)
    assert 0 < len(no_source) < len(papers), "the corpus must hold both sources and PDF-only e-prints"
    assert sorted(_requested(server, "e-print")) == sorted(p["arxiv_id"] for p in papers)  # one request each
    assert sorted(_requested(server, "pdf")) == no_source  # one each, and only those
    rows = [r for m in MONTHS for r in store.read_rows(data_root / "papers" / f"{m}.parquet")]
    assert sorted(r["arxiv_id"] for r in rows if r["pdf_status"] != "skipped") == no_source

    # --pdfs all reopens the done shards for the PDFs they lack, and fetches nothing else
    n = len(server.replay.log)
    assert main(_cli_args(server, data_root, "--pdfs", "all")) == 0
    assert not _requested(server, "e-print", n)
    assert sorted(_requested(server, "pdf", n)) == sorted({p["arxiv_id"] for p in papers} - set(no_source))
    # shards holding every PDF serve a rerun with auto (or none) without a request
    n = len(server.replay.log)
    assert main(_cli_args(server, data_root)) == 0 and main(_cli_args(server, data_root, "--pdfs", "none")) == 0
    assert len(server.replay.log) == n


# --- a blocked host stops the run, and the same command heals it ------------------------------------

BLOCKS = {"403 page": {"fault": "block"}, "HTML page served as 200": {"fault": "block", "status": 200},
          "503 beyond the retries": {"fault": "503"}}


@pytest.mark.parametrize("block", BLOCKS)
def test_a_block_stops_the_run_and_the_same_command_finishes_every_paper_once_lifted(server, corpus, tmp_path,
                                                                                     capsys, block):
    reference = tmp_path / "reference"
    assert main(_cli_args(server, reference)) == 0
    jan = _primary_ids(corpus, "2021-01")
    stretch = jan[1:]  # a block from the second paper of the first month on (the corpus is small: --block-after 2)
    server.replay.set_faults([dict(BLOCKS[block], match="/(e-print|pdf)/", ids=[stretch[0], stretch[-1]])])
    capsys.readouterr()

    root = tmp_path / "data"
    args = _cli_args(server, root, "--retries", "0", "--block-after", "2")
    n = len(server.replay.log)
    assert main(args) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the progress bars
    host = server.url.removeprefix("http://")
    assert len(err) == 1 and err[0].startswith(f"error: {host} is blocking or failing the crawl: "), err
    assert f"for 2 papers in a row ({stretch[0]}..{stretch[1]})" in err[0] and "run the same command again" in err[0]
    assert _requested(server, "e-print", n) == jan[:3], "the run stopped at the second refused paper"
    rows = {r["arxiv_id"]: r for r in store.read_rows(root / "papers" / "2021-01.parquet")}
    assert rows[jan[0]]["eprint_status"] in ("ok", "withdrawn")
    for arxiv_id in jan[1:]:  # refused or not reached: pending, no attempt spent, nothing marked failed
        r = rows[arxiv_id]
        assert (r["eprint_status"], r["eprint_attempts"], r["pdf_status"], r["pdf_attempts"]) == ("pending", 0,
                                                                                                "pending", 0)
    assert not store.shard_done(root / "papers", "2021-01")
    assert not (root / "papers" / "2021-02.parquet").exists(), "no later shard is started into the block"

    server.replay.set_faults([])  # the block is lifted: the same command finishes every paper, none lost
    assert main(args) == 0
    assert _state(root) == _state(reference)


def test_a_refused_listing_stops_the_run_too(server, data_root, capsys):
    server.replay.set_faults([{"match": "/api/query", "fault": "block"}])
    assert main(_cli_args(server, data_root)) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "listing 2021-01 failed: API answered HTTP 403" in err[0], err
    assert len(server.replay.log) == 1, "no later shard is listed into the block"


def test_a_refusal_too_short_for_a_block_is_retried_like_a_transient_failure(server, corpus, data_root):
    jan = _primary_ids(corpus, "2021-01")
    # the last two papers of the shard: fewer than --block-after (3), and no later paper to tell
    server.replay.set_faults([{"match": "/e-print/", "fault": "block", "ids": [jan[1], jan[2]]}])
    args = _cli_args(server, data_root, "--retries", "0", "--max-attempts", "2", end="2021-01")
    assert main(args) == 1  # the shard stays open: nothing final yet
    rows = {r["arxiv_id"]: r for r in store.read_rows(data_root / "papers" / "2021-01.parquet")}
    assert all((rows[a]["eprint_status"], rows[a]["eprint_attempts"], rows[a]["pdf_status"]) == ("pending", 1, "pending")
               for a in jan[1:3])
    assert main(args) == 0  # the last attempt: now those papers' own failure, and their PDFs instead
    rows = {r["arxiv_id"]: r for r in store.read_rows(data_root / "papers" / "2021-01.parquet")}
    for arxiv_id in jan[1:3]:
        r = rows[arxiv_id]
        assert r["eprint_status"] == "error" and r["eprint_error"] == "gave up after 2 attempts: HTTP 403"
        assert r["pdf_status"] in ("ok", "withdrawn")


# --- --retry-failed -----------------------------------------------------------------------------------

def test_retry_failed_reopens_every_download_that_failed(server, corpus, data_root, capsys):
    jan = [p for p in load_papers(corpus) if p["published"].startswith("2021-01") and p["primary_category"] == "cs.CV"]
    live = [p["arxiv_id"] for p in jan if not p["withdrawn"]]
    withdrawn = [p["arxiv_id"] for p in jan if p["withdrawn"]]
    gone, html = live[0], live[1]
    server.replay.set_faults([{"match": f"/e-print/{gone}", "fault": "404"},
                              {"match": f"/e-print/{html}", "fault": "html"}])
    args = _cli_args(server, data_root, "--max-attempts", "1", end="2021-01")  # one HTML page is final
    assert main(args) == 0
    rows = {r["arxiv_id"]: r for r in store.read_rows(data_root / "papers" / "2021-01.parquet")}
    assert (rows[gone]["eprint_status"], rows[html]["eprint_status"]) == ("missing", "error")
    failed = {(f["arxiv_id"], f["download"]) for f in store.read_stats(data_root / "papers", "2021-01")["failed"]}
    assert {(gone, "eprint"), (html, "eprint")} <= failed

    server.replay.set_faults([])  # arXiv serves them again
    store.stats_path(data_root / "papers", "2021-01").unlink()  # an open shard alone reopens no failure
    n = len(server.replay.log)
    assert main(args) == 0 and not _requested(server, "e-print", n)

    n = len(server.replay.log)
    assert main([*args, "--retry-failed"]) == 0
    assert sorted(_requested(server, "e-print", n)) == sorted([gone, html, *withdrawn])  # every failure, once
    rows = {r["arxiv_id"]: r for r in store.read_rows(data_root / "papers" / "2021-01.parquet")}
    for arxiv_id in (gone, html):
        r = rows[arxiv_id]
        assert (r["eprint_status"], r["eprint_attempts"]) == ("ok", 1)
        assert (data_root / r["eprint_path"]).read_bytes() == (corpus / "eprint" / arxiv_id).read_bytes()
    stats = store.read_stats(data_root / "papers", "2021-01")
    assert {f["arxiv_id"] for f in stats["failed"]} == set(withdrawn) and stats["done"]


# --- one crawl per data root --------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from pipeline.crawl import crawl_lock
with crawl_lock(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_one_crawl_per_data_root_and_a_dead_holders_lock_is_taken_over(server, data_root, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(data_root)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert main(_cli_args(server, data_root)) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and err[0].startswith(f"error: a crawl of {data_root} is already running (pid "
                                                   f"{holder.pid} on host {socket.gethostname()}, started 20"), err
        assert not server.replay.log, "the second crawl made no request"
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it
        holder.wait()
    assert "holding" not in (data_root / ".crawl.lock").read_text() and main(_cli_args(server, data_root)) == 0


def test_a_shard_cleans_up_dead_writers_temporaries_but_not_a_live_ones(server, data_root):
    raw = data_root / "raw" / "2021-01"
    raw.mkdir(parents=True)
    dead = raw / ".2101.99999.eprint.abc.tmp"  # left by a killed run: nobody holds it
    dead.write_bytes(b"half")
    writing, finish = threading.Event(), threading.Event()

    def slow_write(f):  # another process's download, still being written while the shard starts
        f.write(b"x")
        writing.set()
        finish.wait(30)

    other = threading.Thread(target=store._atomic_replace, args=(raw / "other.eprint", slow_write))
    other.start()
    assert writing.wait(10)
    assert crawl_shard("2021-01", data_root, _fetcher(data_root), downloads=(), **_urls(server))["done"]
    assert not dead.exists()
    assert len(list(raw.glob(".other.eprint.*.tmp"))) == 1, "a live writer's temporary file was removed"
    finish.set()
    other.join(10)
    assert (raw / "other.eprint").read_bytes() == b"x" and not list(raw.glob("*.tmp"))
