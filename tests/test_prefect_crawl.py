"""End to end: a real local Prefect server, process work pool and worker run the deployment
`crawl-arxiv/cs-cv-2010-2022` against the replay, through the same scripts the demo uses."""
from __future__ import annotations

import inspect
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import store
from pipeline.crawl import HostBlocked, crawl_lock
from pipeline.replay.corpus import load_papers
from replay_fixtures import MONTHS, corpus, server  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
set -euo pipefail
source scripts/prefect_local.sh
trap cvf_stop_all EXIT
cvf_start_prefect_server
cvf_deploy
cvf_start_replay "$CVF_DATA/replay" 6 2021-03
cvf_start_worker
echo "PIDS ${CVF_PIDS[*]}"
"$CVF_PREFECT" deployment run 'crawl-arxiv/cs-cv-2010-2022' --watch --watch-timeout 300 \
  -p start=2021-03 -p end=2021-03 -p delay=0 -p task_retries=0 \
  -p api_url="$CVF_ARXIV_API_URL" -p eprint_url="$CVF_ARXIV_EPRINT_URL" -p pdf_url="$CVF_ARXIV_PDF_URL"
# a run whose shard cannot be finished (the API is down) must make --watch fail
if "$CVF_PREFECT" deployment run 'crawl-arxiv/cs-cv-2010-2022' --watch --watch-timeout 300 \
  -p start=2021-04 -p end=2021-04 -p delay=0 -p task_retries=0 -p api_url="http://127.0.0.1:9/api/query"; then
  echo "FAILED RUN EXITED 0"
else
  echo "FAILED RUN EXITED NON-ZERO"
fi
"""


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(600)
def test_deployment_run_watch_crawls_the_replay(tmp_path):
    if not (REPO / ".venv" / "bin" / "prefect").exists() or not shutil.which("bash"):
        pytest.skip("needs the project's .venv (make setup) and bash")
    data = tmp_path / "data"
    env = dict(os.environ, CVF_DATA=str(data), PREFECT_HOME=str(tmp_path / "prefect"), CVF_REPO=str(REPO),
               PREFECT_API_URL="")
    proc = subprocess.run(["bash", "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=580)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (tmp_path / "prefect" / "logs").glob("*.log"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:] + logs
    assert "Completed" in proc.stdout
    assert "FAILED RUN EXITED NON-ZERO" in proc.stdout
    assert not store.shard_done(data / "papers", "2021-04")

    stats = store.read_stats(data / "papers", "2021-03")
    assert stats and stats["done"]
    rows = pq.read_table(data / "papers" / "2021-03.parquet").to_pylist()
    expected = [p for p in load_papers(data / "replay") if p["primary_category"] == "cs.CV"]
    assert sorted(r["arxiv_id"] for r in rows) == sorted(p["arxiv_id"] for p in expected)
    assert all(r["eprint_status"] in ("ok", "withdrawn") for r in rows)
    assert any(r["eprint_status"] == "ok" and (data / r["eprint_path"]).is_file() for r in rows)

    pids = next(line for line in proc.stdout.splitlines() if line.startswith("PIDS")).split()[1:]
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
             and Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"]  # zombies are dead
    assert not alive, f"processes left running after the script: {alive}"


@pytest.fixture(scope="module")
def harness():
    """One temporary Prefect server for the flow tests of this module (it takes a while to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.server
@pytest.mark.timeout(300)
def test_flow_max_papers_bounds_the_run(server, corpus, tmp_path, harness):
    from flows.crawl import crawl_arxiv

    jan = [p for p in load_papers(corpus) if p["published"].startswith("2021-01") and p["primary_category"] == "cs.CV"]
    e, data = server.endpoints(), tmp_path / "data"
    # Listen on the flow-run logger itself: whether stderr or pytest's log capture sees its lines
    # depends on which earlier test configured Prefect's logging first.
    run_log, listener = [], logging.Handler()
    listener.emit = lambda record: run_log.append(record.getMessage())
    logging.getLogger("prefect.flow_runs").addHandler(listener)
    done = crawl_arxiv(start=MONTHS[0], end=MONTHS[-1], max_papers=len(jan) - 1, data_root=str(data), delay=0,
                       api_url=e["CVF_ARXIV_API_URL"], eprint_url=e["CVF_ARXIV_EPRINT_URL"],
                       pdf_url=e["CVF_ARXIV_PDF_URL"], task_retries=0)
    assert [s["shard"] for s in done] == ["2021-01"] and done[0]["papers"] == len(jan) - 1
    assert done[0]["max_papers"] == len(jan) - 1 and store.shard_done(data / "papers", "2021-01")
    assert not (data / "papers" / "2021-02.parquet").exists()
    logging.getLogger("prefect.flow_runs").removeHandler(listener)
    assert any("not started: 2021-02..2021-02" in line for line in run_log)


def test_the_crawl_deployment_runs_one_at_a_time_with_parameters_the_flow_takes():
    from flows.crawl import crawl_arxiv

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["entrypoint"] == "flows/crawl.py:crawl_arxiv")
    assert deployment["concurrency_limit"] == 1
    assert set(deployment["parameters"]) <= set(inspect.signature(crawl_arxiv.fn).parameters)
    assert deployment["parameters"]["pdfs"] == "auto"


def test_task_retries_are_only_for_a_failed_listing():
    from prefect.states import Failed

    from flows.crawl import ShardOpen, listing_failed

    assert listing_failed(None, None, Failed(data=ShardOpen("2021-01 left open", {"error": "metadata: malformed"})))
    # pending downloads wait for the next run: a retry minutes later would spend their --max-attempts
    assert not listing_failed(None, None, Failed(data=ShardOpen("2021-01 left open", {"pending": 2})))
    assert not listing_failed(None, None, Failed(data=HostBlocked("export.arxiv.org", "HTTP 403 (forbidden)")))
    assert listing_failed(None, None, Failed(data=OSError("disk full")))


@pytest.mark.server
@pytest.mark.timeout(300)
def test_flow_stops_at_a_block_without_retrying_and_heals_once_lifted(server, corpus, tmp_path, harness):
    from flows.crawl import crawl_arxiv

    jan = sorted(p["arxiv_id"] for p in load_papers(corpus)
                 if p["published"].startswith("2021-01") and p["primary_category"] == "cs.CV")
    e, data = server.endpoints(), tmp_path / "data"
    kw = dict(start=MONTHS[0], end=MONTHS[-1], data_root=str(data), delay=0, api_url=e["CVF_ARXIV_API_URL"],
              eprint_url=e["CVF_ARXIV_EPRINT_URL"], pdf_url=e["CVF_ARXIV_PDF_URL"], task_retries=2, retry_delay_s=0)
    server.replay.set_faults([{"match": "/(e-print|pdf)/", "fault": "block", "ids": [jan[0], jan[-1]]}])
    with pytest.raises(HostBlocked, match="for 3 papers in a row"):
        crawl_arxiv(**kw)
    eprints = [path for _, path, _ in server.replay.log if path.startswith("/e-print/")]
    assert len(eprints) == 3, "a blocked shard is not retried by Prefect"
    assert not (data / "papers" / "2021-02.parquet").exists(), "no later shard is started into the block"
    rows = store.read_rows(data / "papers" / "2021-01.parquet")
    assert all(r["eprint_status"] == "pending" and r["eprint_attempts"] == 0 for r in rows)

    with crawl_lock(data), pytest.raises(store.Busy, match="is already running"):
        crawl_arxiv(**kw)  # another crawl holds the root

    server.replay.set_faults([])
    done = crawl_arxiv(**kw)
    assert [s["shard"] for s in done] == MONTHS and all(s["done"] and s["pending"] == 0 for s in done)
    rows = store.read_rows(data / "papers" / "2021-01.parquet")
    assert sorted(r["arxiv_id"] for r in rows) == jan
    assert all(r["eprint_status"] in ("ok", "withdrawn") and r["eprint_attempts"] == 1 for r in rows)
