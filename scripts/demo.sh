#!/usr/bin/env bash
# `make demo`: the whole pipeline on this machine, offline, against the local arXiv replay.
# Starts a Prefect server (SQLite, 127.0.0.1, free port, PREFECT_HOME=.prefect/), registers the
# deployments of prefect.yaml on a process work pool, starts the replay and a worker, then runs
# each stage's deployment with --watch. Everything it started is stopped on exit.
# Later stages append their section at the end, after the crawl's.
set -euo pipefail
cd "$(dirname "$0")/.."
export CVF_DATA=${CVF_DATA:-$PWD/data}
export CVF_CONTACT=${CVF_CONTACT:-cvf-demo@localhost}
PREFECT=.venv/bin/prefect
source scripts/prefect_local.sh
trap cvf_stop_all EXIT

cvf_start_prefect_server
cvf_deploy
cvf_start_replay "$CVF_DATA/replay" 60 2021-01 2021-02
cvf_start_worker

# --- crawl: cs.CV papers of 2021-01..2021-02 from the replay, e-prints (and a PDF where one is no source);
# licences first harvested in bulk from OAI-PMH ListRecords (pipeline.licenses), then taken from that table ------
echo "== crawl-arxiv =="
$PREFECT deployment run 'crawl-arxiv/cs-cv-2010-2022' --watch \
  -p start=2021-01 -p end=2021-02 -p delay=0.2 -p task_retries=0 \
  -p api_url="$CVF_ARXIV_API_URL" -p eprint_url="$CVF_ARXIV_EPRINT_URL" -p pdf_url="$CVF_ARXIV_PDF_URL" \
  -p oai_url="$CVF_ARXIV_OAI_URL" -p harvest_licenses=true
echo "crawl results: paper records in $CVF_DATA/papers/, e-prints and PDFs in $CVF_DATA/raw/, licences in $CVF_DATA/licenses/"
.venv/bin/python - <<'PY'
import json, os, pathlib
for f in sorted(pathlib.Path(os.environ["CVF_DATA"], "papers").glob("*_stats.json")):
    s = json.loads(f.read_text())
    print(f"  {s['shard']}: {s['papers']} papers, {s['downloaded']} downloaded, {len(s['failed'])} failed for good")
PY

# --- extract: figures from the crawled e-prints (PDF fallback), on a local Dask cluster ---------
echo "== extract-figures =="
$PREFECT deployment run 'extract-figures/local-dask' --watch -p workers=2 -p contact_sheet=48
.venv/bin/python - <<'PY'
import json, os, pathlib
root = pathlib.Path(os.environ["CVF_DATA"])
for f in sorted((root / "figures").glob("*_stats.json")):
    s = json.loads(f.read_text())
    print(f"  {f.name[:7]}: {s.get('papers')} papers, {s.get('figures')} figures")
print(f"contact sheet: {root / 'figures' / 'contact_sheet.png'}")
PY

# --- labeling: a real Label Studio; a share of the tasks answered from the replay's truth ------
echo "== labeling (Label Studio) =="
.venv/bin/python -m labeling.demo --truth "$CVF_DATA/replay/truth.parquet" --count 60 --share 0.5

# --- classifier, scores, filter + 90/10 split by paper, published manifest -------------------
echo "== train-classifier / score-figures / filter-and-publish =="
$PREFECT deployment run 'train-classifier/replay-truth' --watch
$PREFECT deployment run 'score-figures/all-shards' --watch
$PREFECT deployment run 'filter-and-publish/cvf-manifest' --watch \
  -p name=cvf-demo -p threshold=0.5 -p overwrite=true -p out="$CVF_DATA/manifests"
.venv/bin/python -m pipeline.verify "$CVF_DATA/manifests/cvf-demo" --images "$CVF_DATA/images" || true
cat <<TXT

Done. Results:
  paper records      $CVF_DATA/papers/
  figures + sheet    $CVF_DATA/figures/  (images in $CVF_DATA/images/)
  labels             $CVF_DATA/labels/labels.parquet  (Label Studio keeps running: see above; stop it
                     with .venv/bin/python -m labeling.serve --stop)
  classifier card    $CVF_DATA/classifier/
  manifest           $CVF_DATA/manifests/cvf-demo/  (README.md is the dataset card)
TXT
