# shellcheck shell=bash
# A local, offline Prefect: server (SQLite, 127.0.0.1, free port), process work pool, the
# deployments of prefect.yaml, a worker; plus the arXiv replay. Source it, then call:
#
#   cvf_start_prefect_server        # exports PREFECT_API_URL
#   cvf_deploy                      # creates the work pool, registers every deployment in prefect.yaml
#   cvf_start_replay DIR [N] [MONTHS...]  # generates a corpus in DIR if needed; exports CVF_ARXIV_* URLs
#   cvf_start_worker                # a process worker on the pool (flow runs inherit this env)
#   cvf_stop_all                    # stops everything started above (demo.sh traps it on EXIT)
#
# Everything it starts is recorded in CVF_PIDS and only those processes are stopped.

: "${CVF_REPO:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${CVF_PY:=$CVF_REPO/.venv/bin/python}"
: "${CVF_POOL:=cvf-process}"
: "${PREFECT_HOME:=$CVF_REPO/.prefect}"
: "${CVF_LOGS:=$PREFECT_HOME/logs}"
export CVF_REPO PREFECT_HOME
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_LOGGING_EXTRA_LOGGERS=cvf   # pipeline logs show up in the flow-run logs
CVF_PIDS=()

_cvf_free_port() {
  "$CVF_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

CVF_PREFECT="$(dirname "$CVF_PY")/prefect"  # the binary itself, so that $! is its pid

# Start "$@" in the background and record its pid. Job control on (set -m) so the process keeps
# SIGINT: a non-interactive shell would start it with SIGINT ignored, and Prefect's server and
# worker turn SIGTERM into SIGINT to shut down.
_cvf_background() {
  set -m
  "$@" &
  CVF_PIDS+=($!)
  set +m
}

_cvf_wait_for() {  # URL SECONDS WHAT
  local url=$1 deadline=$((SECONDS + $2))
  until "$CVF_PY" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url" 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "$3 did not come up at $url (logs: $CVF_LOGS)" >&2; return 1; fi
    sleep 1
  done
}

cvf_start_prefect_server() {
  mkdir -p "$PREFECT_HOME" "$CVF_LOGS"
  local port; port=$(_cvf_free_port)
  export PREFECT_API_URL="http://127.0.0.1:$port/api"
  echo "starting Prefect server on 127.0.0.1:$port (PREFECT_HOME=$PREFECT_HOME)"
  _cvf_background "$CVF_PREFECT" server start --host 127.0.0.1 --port "$port" >"$CVF_LOGS/server.log" 2>&1
  _cvf_wait_for "$PREFECT_API_URL/health" 180 "Prefect server"
}

cvf_deploy() {
  "$CVF_PREFECT" work-pool inspect "$CVF_POOL" >/dev/null 2>&1 ||
    "$CVF_PREFECT" work-pool create "$CVF_POOL" --type process >"$CVF_LOGS/pool.log" 2>&1
  (cd "$CVF_REPO" && "$CVF_PREFECT" --no-prompt deploy --all) >"$CVF_LOGS/deploy.log" 2>&1 ||
    { cat "$CVF_LOGS/deploy.log" >&2; return 1; }
  echo "deployments registered on pool $CVF_POOL"
}

cvf_start_replay() {  # DIR [N_PAPERS] [MONTHS...]
  local dir=$1 papers=${2:-20}; shift 2 || shift $#
  local months=("$@"); ((${#months[@]})) || months=(2021-01 2021-02)
  rm -f "$dir/url"
  _cvf_background "$CVF_PY" -m pipeline.replay serve --corpus "$dir" --papers "$papers" --months "${months[@]}" \
    --url-file "$dir/url" >"$CVF_LOGS/replay.log" 2>&1
  local deadline=$((SECONDS + 120))
  until [[ -s $dir/url ]]; do
    if ((SECONDS > deadline)); then echo "replay did not start (logs: $CVF_LOGS/replay.log)" >&2; return 1; fi
    sleep 0.5
  done
  local url; url=$(<"$dir/url")
  export CVF_ARXIV_API_URL="$url/api/query" CVF_ARXIV_EPRINT_URL="$url/e-print/{id}" \
    CVF_ARXIV_PDF_URL="$url/pdf/{id}" CVF_ARXIV_OAI_URL="$url/oai"
  echo "arXiv replay at $url (corpus $dir)"
}

cvf_start_worker() {
  _cvf_background "$CVF_PREFECT" worker start --pool "$CVF_POOL" --type process >"$CVF_LOGS/worker.log" 2>&1
  echo "process worker started on pool $CVF_POOL"
}

cvf_stop_all() {  # newest first: TERM, up to 10 s of grace, then KILL; only what was started above
  local n pid i
  for ((n = ${#CVF_PIDS[@]} - 1; n >= 0; n--)); do
    pid=${CVF_PIDS[n]}
    kill "$pid" 2>/dev/null || continue
    for ((i = 0; i < 20; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  CVF_PIDS=()
}
