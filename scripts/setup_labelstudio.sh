#!/usr/bin/env bash
# Install the Label Studio *server* into its own venv, .venv-labelstudio.
#
# Why a separate venv: label-studio pins python-json-logger==2.0.4 while Prefect's pydocket
# needs >=2.0.7; sharing one environment downgrades Prefect to a version that crashes. The
# project venv holds only label-studio-sdk and talks to this server over HTTP.
#
# Idempotent: does nothing when the pinned version is already installed (about 3 minutes and
# 1 GB the first time). Usage: bash scripts/setup_labelstudio.sh  (or: make labelstudio)
set -euo pipefail
cd "$(dirname "$0")/.."

LS_VERSION="1.23.2"
VENV="${CVF_LABEL_STUDIO_VENV:-.venv-labelstudio}"
PY="${PY:-python3.11}"

if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('label-studio') != '$LS_VERSION')" 2>/dev/null; then
  echo "label-studio $LS_VERSION already installed in $VENV"
  exit 0
fi

echo "installing label-studio $LS_VERSION into $VENV (about 3 minutes, 1 GB) ..."
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "label-studio==$LS_VERSION"
"$VENV/bin/python" -c "import importlib.metadata as m; print('label-studio', m.version('label-studio'), 'installed in $VENV')"
